"""Batched serving: requests decoded together give what they give alone, each with its own params,
stream, cancellation and prefix cache, and nothing of one user reaches another (tiny model, fp32)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fspo.data.runs import resolve_model
from fspo.data.schema import PreferenceRecord
from fspo.llm.base import GenerationParams
from fspo.serve.batching import prefill_groups
from fspo.serve.personalize import Engine, Personalized

GREEDY = GenerationParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def engine() -> Engine:
    eng = Engine.load(resolve_model("tiny"), cache_users=16)
    assert next(eng.model.parameters()).dtype.is_floating_point and next(eng.model.parameters()).element_size() == 4
    yield eng
    eng.close()


def shots(user: str, n: int, tag: str) -> list[PreferenceRecord]:
    return [
        PreferenceRecord(user, f"Review {tag} film {i}.", f"A bright {tag} film {i}, warm.", f"Dull {tag} {i}.")
        for i in range(n)
    ]


def together(engine: Engine, calls: list[Callable[[], Iterator]]) -> list[list]:
    """Open every stream while the scheduler is held, so they are admitted as one batch; drain them."""
    engine.batcher.max_rows_seen = 0
    with engine.batcher._cv:  # the scheduler cannot admit anything until all are queued
        streams = [call() for call in calls]
    return [list(s) for s in streams]


def result(items: list) -> Personalized:
    assert isinstance(items[-1], Personalized)
    assert "".join(items[:-1]) == items[-1].answer  # the stream's pieces are the answer
    return items[-1]


def test_batched_greedy_equals_alone_exactly(engine: Engine) -> None:
    # Prompts of very different lengths (0 to 4 shots, short and long questions): lots of left padding.
    cases = [
        ("b1", shots("b1", 4, "red"), "Review the movie.", 24),
        ("b2", shots("b2", 1, "blue"), "What is the best way to cook rice for a large family dinner?", 16),
        ("b3", [], "Any film?", 30),
        ("b4", shots("b4", 3, "green"), "q?", 8),
        ("b5", shots("b5", 2, "gold"), "Recommend a book for a long flight, please.", 24),
    ]
    alone = [engine.generate(u, s, q, GenerationParams(max_new_tokens=n), use_cache=False) for u, s, q, n in cases]
    batched = together(
        engine,
        [
            lambda u=u, s=s, q=q, n=n: engine.stream(u, s, q, GenerationParams(max_new_tokens=n), use_cache=False)
            for u, s, q, n in cases
        ],
    )
    assert engine.batcher.max_rows_seen == len(cases)
    for a, b in zip(alone, batched):
        b = result(b)
        assert b.raw == a.raw and b.completion_tokens == a.completion_tokens
    # The same through the per-user prefix cache (cold, then warm) while batched.
    for _ in range(2):
        cached = together(
            engine,
            [
                lambda u=u, s=s, q=q, n=n: engine.stream(u, s, q, GenerationParams(max_new_tokens=n))
                for u, s, q, n in cases
            ],
        )
        assert [result(c).raw for c in cached] == [a.raw for a in alone]
    assert all(result(c).cached_tokens > 0 for c, case in zip(cached, cases) if case[1])


def test_mixed_params_and_raw_completions_in_one_batch(engine: Engine) -> None:
    s = shots("m", 3, "teal")
    prompt = engine.render(s, "Any film?").text
    calls = [
        lambda: engine.stream("m", s, "Any film?", GREEDY),
        lambda: engine.stream("m", s, "Any film?", GenerationParams(max_new_tokens=20, temperature=1.0, seed=3)),
        lambda: engine.stream("m", s, "Any film?", GenerationParams(max_new_tokens=20, temperature=0.7, top_p=0.5)),
        lambda: engine.stream_complete(prompt, GenerationParams(max_new_tokens=12, stop=("e",))),
        lambda: engine.stream_complete(prompt, GenerationParams(max_new_tokens=5)),
    ]
    alone = [result(list(call())) for call in calls]
    batched = [result(items) for items in together(engine, calls)]
    assert engine.batcher.max_rows_seen >= len(calls) - 1  # a stop can end one at its first token
    for a, b in zip(alone, batched):
        assert (b.raw, b.completion_tokens) == (a.raw, a.completion_tokens)
    assert batched[4].completion_tokens == 5 and "e" not in batched[3].answer
    # Seeds are per request: another seed in the same batch changes only that request.
    other = together(
        engine,
        [calls[1], lambda: engine.stream("m", s, "Any film?", GenerationParams(max_new_tokens=20, temperature=1.0))],
    )
    assert result(other[0]).raw == alone[1].raw


def test_concurrent_threads_are_batched_and_stream(engine: Engine) -> None:
    """Plain threads calling generate and stream at once (as the HTTP server's thread pool does)."""
    users = [f"t{i}" for i in range(6)]
    data = {u: shots(u, 2, f"tag{u}") for u in users}
    params = GenerationParams(max_new_tokens=40)
    alone = {u: engine.generate(u, data[u], "Tell me more.", params, use_cache=False) for u in users}
    got: dict[str, Personalized] = {}
    firsts: dict[str, float] = {}
    barrier = threading.Barrier(len(users))

    def client(u: str, streaming: bool) -> None:
        barrier.wait()
        start = time.perf_counter()
        if streaming:
            items = []
            for item in engine.stream(u, data[u], "Tell me more.", params):
                if not items:
                    firsts[u] = time.perf_counter() - start
                items.append(item)
            got[u] = result(items)
        else:
            got[u] = engine.generate(u, data[u], "Tell me more.", params)

    engine.batcher.max_rows_seen = 0
    threads = [threading.Thread(target=client, args=(u, i % 2 == 0)) for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert engine.batcher.max_rows_seen >= 2
    assert {u: got[u].raw for u in users} == {u: alone[u].raw for u in users}
    assert all(got[u].first_token_seconds is not None for u in users)


def test_cancelled_stream_leaves_the_batch_and_the_others_finish(engine: Engine) -> None:
    s = shots("c", 2, "plum")
    long = GenerationParams(max_new_tokens=300)
    alone = engine.generate("c", s, "Go on.", long, use_cache=False)
    with engine.batcher._cv:
        streams = [engine.stream("c", s, "Go on.", long) for _ in range(3)]
    first = streams[0]
    next(first)
    first.close()  # the client went away
    finished = [result(list(st)) for st in streams[1:]]
    assert all(f.raw == alone.raw for f in finished)
    start = time.perf_counter()
    while engine.batcher.active and time.perf_counter() - start < 10:
        time.sleep(0.01)
    assert engine.batcher.active == 0
    # A cancelled request still waiting in the queue is never decoded.
    with engine.batcher._cv:
        queued = engine.stream("c", s, "Go on.", long)
        queued.close()
        steps = engine.batcher.steps
    time.sleep(0.2)
    assert engine.batcher.steps == steps


def test_max_batch_limits_the_rows_in_flight(engine: Engine) -> None:
    small = Engine(engine.model, engine.tokenizer, engine.info, max_batch=2)
    try:
        s = shots("x", 1, "lime")
        alone = small.generate("x", s, "Hi?", GREEDY, use_cache=False)
        outs = together(small, [lambda: small.stream("x", s, "Hi?", GREEDY, use_cache=False) for _ in range(5)])
        assert small.batcher.max_rows_seen == 2
        assert all(result(o).raw == alone.raw for o in outs)
    finally:
        small.close()


def test_serve_max_batch_option_reaches_the_scheduler() -> None:
    from fspo.serve.command import load_engine

    one = load_engine(resolve_model("tiny"), cache_users=0, max_batch=3)
    try:
        assert one.batcher.max_batch == 3
    finally:
        one.close()


def test_prefix_tokens_are_not_re_tokenized_on_a_warm_request(engine: Engine, monkeypatch) -> None:
    s = shots("w", 4, "mint")
    engine.invalidate("w")
    cold = engine.generate("w", s, "Review the movie.", GREEDY)
    assert cold.cached_tokens == 0 and engine.cache.get("w").boundary is not None
    questions = ["Review the movie.", "  leading space?", "# a header", "naïve café ☕ 日本語?", "\nnew line", "x"]
    expected = {q: engine.render(s, q, GREEDY.max_new_tokens) for q in questions}
    # A warm request renders without fitting the whole prompt again (render is not called) ...
    monkeypatch.setattr(engine, "render", lambda *a, **k: pytest.fail("the prefix was re-tokenized"))
    for q in questions:
        fast = engine._render_for("w", s, q, GREEDY.max_new_tokens, engine.info.layout)
        assert (fast.ids, fast.text, fast.prefix_text, fast.shots_used) == (
            expected[q].ids,
            expected[q].text,
            expected[q].prefix_text,
            expected[q].shots_used,
        )
    warm = engine.generate("w", s, "Review the movie.", GREEDY)
    assert warm.cached_tokens > 0 and warm.raw == cold.raw
    monkeypatch.undo()
    # ... but different shots never take the shortcut (their prefix text differs).
    changed = engine._render_for("w", shots("w", 4, "sage"), "x", 24, engine.info.layout)
    assert "sage" in changed.text and "mint" not in changed.text


def test_invalidation_during_a_batch(engine: Engine) -> None:
    old, new = shots("v", 3, "old"), shots("v", 3, "new")
    params = GenerationParams(max_new_tokens=120)
    alone_old = engine.generate("v", old, "Go.", params, use_cache=False)
    alone_new = engine.generate("v", new, "Go.", params, use_cache=False)
    engine.invalidate("v")
    running = engine.stream("v", old, "Go.", params)
    next(running)  # admitted, its prefix stored, decoding
    engine.invalidate("v")  # the user's preferences changed mid-answer
    assert "v" not in engine.cache.users()
    fresh = engine.generate("v", new, "Go.", params)  # joins the batch with the new shots
    assert fresh.raw == alone_new.raw and fresh.cached_tokens == 0
    rest = list(running)
    assert rest[-1].raw == alone_old.raw  # the running answer finished on its own (old) context
    # A request queued before an invalidation does not store its (stale) prefix afterwards.
    engine.invalidate("v")
    with engine.batcher._cv:
        queued = engine.stream("v", old, "Go.", GREEDY)
        engine.invalidate("v")
    list(queued)
    assert "v" not in engine.cache.users()
    again = engine.generate("v", new, "Go.", GREEDY)
    assert again.cached_tokens == 0 and "new film" in again.prompt and "old film" not in again.prompt


def test_no_cross_user_leakage_in_a_batch(engine: Engine) -> None:
    """Users with distinct shots, same question, one batch, warm and cold: every prompt, cached prefix
    and output is the one that user gets alone."""
    users = {f"leak{i}": shots(f"leak{i}", 3, f"zq{i}x") for i in range(4)}
    alone = {u: engine.generate(u, s, "Same question?", GREEDY, use_cache=False) for u, s in users.items()}
    for u in users:
        engine.invalidate(u)
    for _ in range(2):  # cold (each computes its own prefix in the batch), then warm
        outs = together(
            engine, [lambda u=u, s=s: engine.stream(u, s, "Same question?", GREEDY) for u, s in users.items()]
        )
        for (u, _s), items in zip(users.items(), outs):
            r = result(items)
            assert r.raw == alone[u].raw
            tag = u.removeprefix("leak")
            others = [t for t in users if t != u]
            assert f"zq{tag}x" in r.prompt and not any(f"zq{o.removeprefix('leak')}x" in r.prompt for o in others)
    for u in users:
        entry = engine.cache.get(u)
        cached_text = engine.tokenizer.decode(entry.ids)
        assert f"zq{u.removeprefix('leak')}x" in cached_text
        assert not any(f"zq{o.removeprefix('leak')}x" in cached_text for o in users if o != u)


def test_http_concurrent_users_and_n_choices_are_batched(engine: Engine, tmp_path) -> None:
    """Through the HTTP API: concurrent users' requests and one request's ``n`` choices are decoded
    together, and each answer is the one that user gets alone."""
    import httpx

    from fspo.serve.api import create_app
    from fspo.serve.live import serve_in_thread
    from fspo.serve.users import UserStore

    admin = {"Authorization": "Bearer admin-secret"}
    app = create_app(engine, UserStore(tmp_path / "s.sqlite"), ["admin-secret"], model_name="tiny")
    users = [f"h{i}" for i in range(4)]
    body = {"question": "Any film?", "max_new_tokens": 24}
    with serve_in_thread(app) as base:
        for u in users:
            prefs = [
                {"prompt": f"Film {u} {j}?", "chosen": f"Bright {u} {j}.", "rejected": f"Dull {j}."} for j in range(3)
            ]
            r = httpx.post(f"{base}/v1/users/{u}/preferences", json={"preferences": prefs}, headers=admin)
            assert r.status_code == 201
        alone = {
            u: httpx.post(f"{base}/v1/users/{u}/generate", json=body, headers=admin, timeout=60).json() for u in users
        }
        engine.batcher.max_rows_seen = 0
        got: dict[str, dict] = {}

        def ask(u: str) -> None:
            got[u] = httpx.post(f"{base}/v1/users/{u}/generate", json=body, headers=admin, timeout=60).json()

        threads = [threading.Thread(target=ask, args=(u,)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert {u: got[u]["answer"] for u in users} == {u: alone[u]["answer"] for u in users}
        engine.batcher.max_rows_seen = 0
        chat = {"model": "tiny", "user": "h0", "n": 3, "max_tokens": 16, "temperature": 1.0, "seed": 5}
        chat["messages"] = [{"role": "user", "content": "Any film?"}]
        out = httpx.post(f"{base}/v1/chat/completions", json=chat, headers=admin, timeout=60).json()
        assert len(out["choices"]) == 3 and engine.batcher.max_rows_seen >= 2
        for i, choice in enumerate(out["choices"]):  # choice i is seed + i, as when run alone
            one = httpx.post(
                f"{base}/v1/chat/completions", json=chat | {"n": 1, "seed": 5 + i}, headers=admin, timeout=60
            ).json()
            assert choice["message"]["content"] == one["choices"][0]["message"]["content"]


def test_prefilled_together_equals_alone(engine: Engine) -> None:
    """Suffixes of different lengths after prefixes of different lengths, a row with no prefix
    among them: the logits after each suffix and its KV equal the one-sequence prefill's."""
    b = engine.batcher
    ids = [engine.tokenizer.encode(f"Review {i} of the film with a long name {i * 7}.") for i in range(4)]
    rows = []
    for i, n in enumerate([0, 3, 9, 5]):
        kv = b.prefill(ids[i][:n])[0] if n else None
        rows.append((ids[i][n:], n, kv))
    together_ = b._prefill_together(rows)
    for (suffix, n, kv), (kv_t, logits_t) in zip(rows, together_):
        kv_a, logits_a = b.prefill(suffix, kv, start=n)
        assert torch.isfinite(logits_t).all()
        torch.testing.assert_close(logits_t, logits_a, rtol=1e-5, atol=1e-5)
        for (ka, va), (kt, vt) in zip(kv_a, kv_t):
            assert kt.shape == ka.shape
            torch.testing.assert_close(kt, ka, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(vt, va, rtol=1e-5, atol=1e-5)


def test_warm_requests_admitted_together_share_one_prefill(engine: Engine) -> None:
    users = {f"pf{i}": shots(f"pf{i}", 3, f"p{i}q") for i in range(5)}
    alone = {u: engine.generate(u, s, "Which film?", GREEDY, use_cache=False) for u, s in users.items()}
    for u, s in users.items():  # warm every user's prefix
        engine.generate(u, s, "Warm up.", GenerationParams(max_new_tokens=1))
    before = engine.batcher.prefills
    outs = together(engine, [lambda u=u, s=s: engine.stream(u, s, "Which film?", GREEDY) for u, s in users.items()])
    assert engine.batcher.prefills - before == 1  # five questions after five cached prefixes: one forward
    for u, items in zip(users, outs):
        r = result(items)
        assert r.cached_tokens > 0 and r.raw == alone[u].raw


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3000), max_size=20), st.integers(1, 8192))
def test_prefill_groups_cover_every_job_once_with_bounded_padding(lengths: list[int], max_tokens: int) -> None:
    groups = prefill_groups(lengths, max_tokens)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        if len(g) > 1:
            padded = len(g) * max(lengths[i] for i in g)
            assert padded <= 2 * sum(lengths[i] for i in g) and padded <= max_tokens


def test_a_prompt_without_tokens_is_refused_before_the_scheduler(engine: Engine) -> None:
    from fspo.serve.batching import Job

    with pytest.raises(ValueError, match="no tokens"):
        engine.batcher.submit(Job([], GREEDY))


def test_a_failed_group_prefill_is_retried_one_job_at_a_time(engine: Engine, monkeypatch) -> None:
    users = {f"gf{i}": shots(f"gf{i}", 2, f"g{i}q") for i in range(3)}
    alone = {u: engine.generate(u, s, "Which one?", GREEDY, use_cache=False) for u, s in users.items()}

    calls = []

    def broken(rows):
        calls.append(len(rows))
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine.batcher, "_prefill_together", broken)
    outs = together(
        engine, [lambda u=u, s=s: engine.stream(u, s, "Which one?", GREEDY, use_cache=False) for u, s in users.items()]
    )
    assert calls and max(calls) > 1  # the group was tried
    assert [result(o).raw for o in outs] == [alone[u].raw for u in users]
