"""Call cache: replay, chunked commits, seeds that do not depend on what ran before; scripted rules."""

from __future__ import annotations

from fspo.llm.base import GenerationParams
from fspo.llm.cache import CachedBackend, CallCache
from fspo.llm.scripted import ScriptedBackend


class Counting:
    name = "counting"
    batch_size = 2

    def __init__(self):
        self.seen: list[str] = []
        self.seeds: list[int] = []

    def generate(self, prompts, params):
        self.seen += list(prompts)
        self.seeds.append(params.seed)
        return [f"{p}|{params.seed}" for p in prompts]


def test_cache_replays_and_counts(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    inner = Counting()
    llm = CachedBackend(inner, cache, progress=False)
    params = GenerationParams(seed=3)
    first = llm.generate(["a", "b", "c"], params)
    assert llm.misses == 3 and llm.hits == 0
    again = CachedBackend(inner, CallCache(tmp_path / "c.sqlite"), progress=False)
    assert again.generate(["a", "b", "c"], params) == first
    assert again.hits == 3 and again.misses == 0 and len(inner.seen) == 3


def test_salts_and_params_change_the_key(tmp_path):
    inner = Counting()
    llm = CachedBackend(inner, CallCache(tmp_path / "c.sqlite"), progress=False)
    llm.generate(["a", "a"], GenerationParams(), salts=["s0", "s1"])
    llm.generate(["a"], GenerationParams(temperature=1.0), salts=["s0"])
    assert llm.misses == 3


def test_chunk_seed_depends_only_on_chunk(tmp_path):
    """Resuming after chunk 1 gives chunk 2 the same seed as an uninterrupted run."""
    full = Counting()
    out_full = CachedBackend(full, CallCache(tmp_path / "a.sqlite"), progress=False).generate(
        list("abcd"), GenerationParams()
    )
    part = Counting()
    cache = CallCache(tmp_path / "b.sqlite")
    CachedBackend(part, cache, progress=False).generate(list("ab"), GenerationParams())
    out_resumed = CachedBackend(part, cache, progress=False).generate(list("abcd"), GenerationParams())
    assert out_resumed == out_full
    assert part.seen == list("abcd")  # nothing repeated


def test_choice_logprobs_cached(tmp_path):
    llm = CachedBackend(ScriptedBackend(logprobs=True), CallCache(tmp_path / "c.sqlite"), progress=False)
    assert llm.can_score_choices
    prompt = "User description:\nlikes positive\nQuestion:\nq\nResponse A:\nI loved it.\nResponse B:\nI hated it.\nDecide. Verdict: A or Verdict: B"
    a = llm.choice_logprobs([prompt], [" A", " B"], prefix="Verdict:")
    b = llm.choice_logprobs([prompt], [" A", " B"], prefix="Verdict:")
    assert a == b and llm.misses == 1 and llm.hits == 1 and a[0][0] > a[0][1]


def test_scripted_steering_expresses_attributes():
    from fspo.data.attributes import measure

    llm = ScriptedBackend()
    pos, neg = llm.generate(
        [
            "Write a review.\nSteering:\n- sentiment: positive\n- length: concise",
            "Write a review.\nSteering:\n- sentiment: negative\n- length: verbose",
        ],
        GenerationParams(),
    )
    assert measure(pos).value("sentiment") == "positive" and measure(pos).value("length") == "concise"
    assert measure(neg).value("sentiment") == "negative" and measure(neg).value("length") == "verbose"
    assert llm.generate(["Write a review.\nSteering:\n- sentiment: positive"], GenerationParams()) == llm.generate(
        ["Write a review.\nSteering:\n- sentiment: positive"], GenerationParams()
    )
