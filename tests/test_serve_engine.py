"""The personalization engine: prefix-cache reuse gives the same tokens as no cache; truncation."""

from __future__ import annotations

import pytest

from fspo.data.runs import ResolvedModel, resolve_model
from fspo.data.schema import PreferenceRecord
from fspo.errors import FspoError
from fspo.llm.base import GenerationParams
from fspo.serve.batching import Done
from fspo.serve.personalize import Engine


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(resolve_model("tiny"), cache_users=2)


def shots(user: str, n: int, tag: str = "") -> list[PreferenceRecord]:
    return [
        PreferenceRecord(user, f"Review film {tag}{i}.", f"A bright happy film {tag}{i}.", f"Dull {tag}{i}.")
        for i in range(n)
    ]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_prefix_matches_no_cache(engine: Engine, temperature: float) -> None:
    s = shots("u1", 4)
    params = GenerationParams(max_new_tokens=24, temperature=temperature, seed=7)
    engine.invalidate("u1")
    plain = engine.generate("u1", s, "Review the movie.", params, use_cache=False)
    cold = engine.generate("u1", s, "Review the movie.", params)
    warm = engine.generate("u1", s, "Review the movie.", params)
    other_q = engine.generate("u1", s, "What is the best way to cook?", params)
    other_plain = engine.generate("u1", s, "What is the best way to cook?", params, use_cache=False)
    assert plain.cached_tokens == 0
    assert cold.cached_tokens == 0 and warm.cached_tokens > 0 and warm.cached_tokens == other_q.cached_tokens
    assert plain.raw == cold.raw == warm.raw
    assert other_q.raw == other_plain.raw
    assert plain.completion_tokens == warm.completion_tokens


def test_changed_preferences_do_not_reuse_stale_prefix(engine: Engine) -> None:
    params = GenerationParams(max_new_tokens=8, temperature=1.0, seed=1)
    engine.generate("u2", shots("u2", 3), "q?", params)
    changed = shots("u2", 3, tag="x")
    got = engine.generate("u2", changed, "q?", params)
    assert got.raw == engine.generate("u2", changed, "q?", params, use_cache=False).raw
    assert "Review film x0." in got.prompt and "Review film 0." not in got.prompt


def test_lru_is_bounded(engine: Engine) -> None:
    params = GenerationParams(max_new_tokens=2)
    for u in ("a", "b", "c"):
        engine.generate(u, shots(u, 2), "q?", params)
    assert engine.cache.users() == ["b", "c"]


def test_truncation_drops_oldest_whole_shots_never_the_question(engine: Engine) -> None:
    small = Engine(engine.model, engine.tokenizer, ResolvedModel("tiny", n_shots=8, max_length=260))
    s = shots("u", 8)
    r = small.render(s, "The question stays.", max_new_tokens=16)
    assert 0 < r.shots_used < 8 and r.shots_available == 8
    assert len(r.ids) <= 260 - 16
    assert "The question stays." in r.text
    assert f"Review film {8 - r.shots_used}." in r.text and "Review film 0." not in r.text
    with pytest.raises(FspoError, match="max_length"):
        small.render(s, "long " * 400, max_new_tokens=16)


def test_only_most_recent_n_shots(engine: Engine) -> None:
    r = engine.render(shots("u", 6), "q?")
    assert r.shots_used == 4 and "Review film 2." in r.text and "Review film 1." not in r.text


def test_rat_layout_returns_description(engine: Engine, monkeypatch) -> None:
    """A RAT model writes its description, then the answer block; the engine splits the two."""
    rat = Engine(engine.model, engine.tokenizer, ResolvedModel("tiny", layout="rat"))
    written = "\nLikes bright, happy films.\n## Preferred Response \nA joyful movie.\n# Example 3"
    ids = engine.tokenizer(written, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(rat, "_run", lambda *a, **k: Done(0, ids, None))
    out = rat.generate("r", shots("r", 2), "q?", GenerationParams(max_new_tokens=40))
    assert out.prompt.endswith("## User Description")  # the model writes the newline, as in training
    assert (out.description, out.answer) == ("Likes bright, happy films.", "A joyful movie.")
    only = engine.tokenizer("\nOnly a description.")["input_ids"]
    monkeypatch.setattr(rat, "_run", lambda *a, **k: Done(0, only, None))
    out = rat.generate("r", shots("r", 2), "q?", GenerationParams(max_new_tokens=40))
    assert (out.description, out.answer) == ("Only a description.", "")  # no answer block: no answer


def test_stream_equals_generate_and_stops_when_the_reader_leaves(engine: Engine) -> None:
    import time

    s = shots("u5", 3)
    params = GenerationParams(max_new_tokens=16, temperature=1.0, seed=2)
    plain = engine.generate("u5", s, "Any film?", params)
    items = list(engine.stream("u5", s, "Any film?", params))
    assert "".join(items[:-1]) == plain.answer == items[-1].answer
    assert items[-1].cached_tokens > 0 and items[-1].completion_tokens == plain.completion_tokens
    # A reader that leaves after the first piece takes its sequence out of the batch at the next step.
    stream = engine.stream("u5", s, "Any film?", GenerationParams(max_new_tokens=800))
    next(stream)
    start = time.perf_counter()
    stream.close()
    while engine.batcher.active and time.perf_counter() - start < 30:
        time.sleep(0.01)
    assert engine.batcher.active == 0
    assert time.perf_counter() - start < 3.0
