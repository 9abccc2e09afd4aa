"""``fspo serve`` through the ``openai`` client against a live server: chat and legacy completions,
streaming (server-sent events, incremental), cached tokens, ``n``, auth and per-user isolation."""

from __future__ import annotations

import time

import httpx
import pytest

from fspo.data.runs import resolve_model
from fspo.serve.api import create_app
from fspo.serve.live import serve_in_thread
from fspo.serve.personalize import Engine
from fspo.serve.users import UserStore

openai = pytest.importorskip("openai")

ADMIN = "admin-secret"
ASK = [{"role": "user", "content": "Recommend a film for tonight."}]


def auth(key: str = ADMIN) -> dict:
    return {"Authorization": f"Bearer {key}"}


def pair(tag: str) -> dict:
    return {"prompt": f"Review film {tag}.", "chosen": f"A bright happy film {tag}.", "rejected": f"Dull {tag}."}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(resolve_model("tiny"), device="cpu")


@pytest.fixture(scope="module")
def live(engine, tmp_path_factory):
    """(base url, admin client, alice's per-user key); alice has 4 pairs, bob 2."""
    app = create_app(engine, UserStore(tmp_path_factory.mktemp("db") / "s.sqlite"), [ADMIN], model_name="tiny")
    with serve_in_thread(app) as base:
        key = httpx.post(f"{base}/v1/users/alice/keys", headers=auth()).json()["api_key"]
        prefs = {"preferences": [pair(f"a{i}") for i in range(4)]}
        assert httpx.post(f"{base}/v1/users/alice/preferences", json=prefs, headers=auth(key)).status_code == 201
        prefs = {"preferences": [pair(f"b{i}") for i in range(2)]}
        assert httpx.post(f"{base}/v1/users/bob/preferences", json=prefs, headers=auth()).status_code == 201
        yield base, openai.OpenAI(base_url=base + "/v1", api_key=ADMIN, max_retries=0), key


def client(base: str, key: str):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def test_chat_and_cached_tokens_on_a_warm_request(live, engine) -> None:
    base, admin, _ = live
    engine.invalidate("alice")
    cold = admin.chat.completions.create(model="tiny", messages=ASK, user="alice", max_tokens=8)
    warm = admin.chat.completions.create(model="tiny", messages=ASK, user="alice", max_tokens=8)
    assert cold.object == "chat.completion" and cold.choices[0].message.role == "assistant"
    assert cold.choices[0].finish_reason in ("stop", "length") and cold.usage.completion_tokens <= 8
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert 0 < warm.usage.prompt_tokens_details.cached_tokens < warm.usage.prompt_tokens
    assert warm.choices[0].message.content == cold.choices[0].message.content  # greedy by default, cache exact
    assert warm.usage.total_tokens == warm.usage.prompt_tokens + warm.usage.completion_tokens
    assert warm.model_extra["fspo"]["shots_used"] == 4 and "cached_tokens" not in warm.model_extra["fspo"]


def test_chat_stream_is_incremental_and_equals_the_plain_answer(live) -> None:
    base, admin, key = live
    kwargs = dict(model="tiny", messages=ASK, max_tokens=48, temperature=0.8, seed=5)
    plain = client(base, key).chat.completions.create(**kwargs)
    start = time.perf_counter()
    first_at, chunks = None, []
    stream = client(base, key).chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    for chunk in stream:
        if first_at is None:
            first_at = time.perf_counter() - start
        chunks.append(chunk)
    total = time.perf_counter() - start
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 3, texts  # several pieces, not one answer sent at the end
    assert "".join(texts) == plain.choices[0].message.content  # same sampling, same cache path
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    assert first_at < total / 2, (first_at, total)


def test_raw_sse_format(live) -> None:
    base, _, key = live
    body = {"model": "tiny", "messages": ASK, "max_tokens": 6, "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=auth(key)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith('data: {"id":"chatcmpl-') for e in events[:-2])


def test_completions_plain_streamed_and_n(live) -> None:
    base, admin, key = live
    user = client(base, key)
    out = user.completions.create(model="tiny", prompt="Recommend a film for tonight.", max_tokens=8)
    assert out.object == "text_completion" and isinstance(out.choices[0].text, str)
    assert out.usage.prompt_tokens_details.cached_tokens > 0  # the same prompt as chat: alice's prefix is warm
    chat = user.chat.completions.create(model="tiny", messages=ASK, max_tokens=8)
    assert out.choices[0].text == chat.choices[0].message.content  # prompt = the question, as in chat
    streamed = list(
        user.completions.create(model="tiny", prompt="Recommend a film for tonight.", max_tokens=8, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text
    two = admin.completions.create(
        model="tiny", prompt="Any film?", user="bob", n=2, temperature=1.0, seed=1, max_tokens=12
    )
    assert [c.index for c in two.choices] == [0, 1] and two.model_extra["fspo"]["user"] == "bob"
    assert two.usage.prompt_tokens_details.cached_tokens >= 0 and two.usage.completion_tokens <= 24
    with pytest.raises(openai.BadRequestError, match="echo"):
        user.completions.create(model="tiny", prompt="x", echo=True)
    with pytest.raises(openai.BadRequestError, match="one string"):
        user.completions.create(model="tiny", prompt=["x", "y"])


def test_n_two_choices_chat_plain_and_streamed(live) -> None:
    base, admin, _ = live
    kwargs = dict(model="tiny", messages=ASK, user="bob", n=2, temperature=1.0, seed=3, max_tokens=12)
    out = admin.chat.completions.create(**kwargs)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].message.content != out.choices[1].message.content  # seeds 3 and 4
    parts = {0: "", 1: ""}
    for chunk in admin.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            parts[c.index] += c.delta.content or ""
    assert [parts[0], parts[1]] == [c.message.content for c in out.choices]
    with pytest.raises(openai.BadRequestError, match="n must be from 1 to 8"):
        admin.chat.completions.create(model="tiny", messages=ASK, user="bob", n=9)


def test_auth_and_isolation_hold_for_streams_and_completions(live) -> None:
    base, _, key = live
    user = client(base, key)
    with pytest.raises(openai.PermissionDeniedError):
        list(user.chat.completions.create(model="tiny", messages=ASK, user="bob", stream=True))
    with pytest.raises(openai.PermissionDeniedError):
        user.completions.create(model="tiny", prompt="x", user="bob", stream=True)
    with pytest.raises(openai.AuthenticationError):
        list(client(base, "nope").chat.completions.create(model="tiny", messages=ASK, stream=True))
    with pytest.raises(openai.BadRequestError, match="set 'user'"):
        client(base, ADMIN).chat.completions.create(model="tiny", messages=ASK, stream=True)  # admin, no user
    # a per-user key's answers are conditioned on its own user's pairs only
    body = {"question": "Recommend a film for tonight.", "max_new_tokens": 4, "return_prompt": True}
    prompt = httpx.post(f"{base}/v1/users/alice/generate", json=body, headers=auth(key)).json()["prompt"]
    assert "a0" in prompt and "b0" not in prompt


def test_a_client_that_leaves_a_stream_frees_the_model(live) -> None:
    base, _, key = live
    body = {"model": "tiny", "messages": ASK, "max_tokens": 800, "stream": True}  # ~1 min of decoding here
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=auth(key)) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i > 4:
                break
    start = time.perf_counter()
    out = client(base, key).chat.completions.create(model="tiny", messages=ASK, max_tokens=2, timeout=120)
    assert out.usage.completion_tokens <= 2 and time.perf_counter() - start < 20


def test_raw_completions_for_clients_that_render_prompts(live) -> None:
    """An admin key without ``user``: the prompt is continued as given (how fspo eval or any client that
    renders FSPO prompts itself uses fspo serve, like a vLLM server)."""
    from fspo.data.prompts import parse_generation
    from fspo.serve.personalize import STOP_STRINGS

    base, admin, key = live
    body = {"question": "Recommend a film for tonight.", "max_new_tokens": 12, "return_prompt": True}
    personal = httpx.post(f"{base}/v1/users/alice/generate", json=body, headers=auth(key)).json()
    raw = admin.completions.create(model="tiny", prompt=personal["prompt"], max_tokens=12, stop=list(STOP_STRINGS))
    assert "fspo" not in raw.model_extra and raw.usage.prompt_tokens == personal["prompt_tokens"]
    assert parse_generation(raw.choices[0].text, "fspo")[0] == personal["answer"]  # same answer as in-process
    prompts = ["Once upon a time", "The film was"]
    many = admin.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=6, temperature=1.0, seed=4)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    streamed = {}
    for chunk in admin.completions.create(
        model="tiny", prompt=prompts, n=2, max_tokens=6, temperature=1.0, seed=4, stream=True
    ):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert [streamed[i] for i in range(4)] == [c.text for c in many.choices]
    stop = many.choices[0].text[2:4]
    if stop:
        cut = admin.completions.create(
            model="tiny", prompt=prompts[0], max_tokens=6, temperature=1.0, seed=4, stop=stop
        )
        assert cut.choices[0].text == many.choices[0].text[: many.choices[0].text.index(stop)]
    with pytest.raises(openai.BadRequestError, match="max_length"):
        admin.completions.create(model="tiny", prompt="word " * 2000, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="stop"):
        admin.completions.create(model="tiny", prompt="x", stop=["a", "b", "c", "d", "e"])
