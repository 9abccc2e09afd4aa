"""Eval lanes (issue 18): scoring beside generation gives the same eval.json and generations as
the sequential stages, byte for byte; side_by_side splits torch's threads and restores them."""

from __future__ import annotations

import json
import threading

import pytest
import torch

import fspo.eval.lanes as lanes
from fspo.eval.lanes import side_by_side
from fspo.eval.runner import EvalConfig, run_eval


def test_side_by_side_keeps_order_splits_threads_and_restores_them():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: dict[str, tuple[int, str]] = {}

        def job(name: str):
            def run() -> str:
                seen[name] = (torch.get_num_threads(), threading.current_thread().name)
                return name

            return run

        assert side_by_side([job("a"), job("b")], parallel=True) == ["a", "b"]
        assert {v[0] for v in seen.values()} == {1}  # each lane got half of the two threads
        assert seen["a"][1] != seen["b"][1]
        assert torch.get_num_threads() == 2
        assert side_by_side([job("c"), job("d")], parallel=False) == ["c", "d"]
        assert seen["c"][1] == seen["d"][1] == threading.current_thread().name
    finally:
        torch.set_num_threads(before)


def test_side_by_side_raises_a_lanes_error_after_both_finish():
    done = []

    def fails() -> None:
        raise ValueError("boom")

    def slow() -> str:
        done.append(True)
        return "ok"

    with pytest.raises(ValueError, match="boom"):
        side_by_side([fails, slow], parallel=True)
    assert done == [True]


def _eval(tmp_path, tiny_run, monkeypatch, parallel: bool) -> tuple[dict, bytes]:
    monkeypatch.setattr(lanes, "lanes_enabled", lambda device: parallel)
    out = tmp_path / ("lanes" if parallel else "sequential")
    cfg = EvalConfig(data="examples/reviews", methods=["base", "fewshot", "fspo-ipo", "oracle"], model=str(tiny_run),
                     shots=2, shots_curve=[0, 2], users=2, queries=2, max_new_tokens=8, max_length=256, n_boot=200,
                     out=str(out), progress=False)  # fmt: skip
    result = run_eval(cfg)
    assert ("lanes_s" in result["timing"]) == parallel
    saved = json.loads((out / "eval.json").read_text())
    saved.pop("timing")
    saved["config"].pop("out")
    return saved, (out / "generations.jsonl").read_bytes()


@pytest.mark.slow
def test_lanes_give_the_sequential_results_exactly(tiny_run, tmp_path, monkeypatch):
    sequential, gens_sequential = _eval(tmp_path, tiny_run, monkeypatch, parallel=False)
    lanes, gens_lanes = _eval(tmp_path, tiny_run, monkeypatch, parallel=True)
    assert gens_lanes == gens_sequential
    assert json.dumps(lanes, sort_keys=True) == json.dumps(sequential, sort_keys=True)
    assert lanes["reward_accuracy"]["fspo-ipo"]["splits"]["heldout_users"]["metric"] == "implicit_reward"
    assert lanes["notes"] == sequential["notes"]  # each lane's notes merged in the sequential order


class Recorder:
    """A backend that answers with the prompt and the batch it came in, and logs every batch."""

    name = "recorder"
    batch_size = 2

    def __init__(self, who: str, log: list) -> None:
        self.who, self.log = who, log

    def generate(self, prompts, params):
        self.log.append((self.who, tuple(prompts), params.seed))
        return [f"{p}|{len(prompts)}|{params.seed}" for p in prompts]


def test_a_helped_call_batches_counts_and_caches_as_an_unhelped_one(tmp_path):
    from fspo.llm.base import GenerationParams
    from fspo.llm.cache import CachedBackend, CallCache, ChunkShare

    prompts = ["a", "b", "a", "c", "d", "e", "f", "g", "h"]  # "a" twice, as the base row asks one question twice
    params = GenerationParams(max_new_tokens=4, temperature=0.0)
    alone_log: list = []
    alone_cache = CallCache(tmp_path / "alone.sqlite")
    alone_cache.put_many({CachedBackend(Recorder("x", []), alone_cache).generate_keys(["e"], params)[0]: "cached e"})
    alone = CachedBackend(Recorder("owner", alone_log), alone_cache)
    expected = alone.generate(prompts, params)

    log: list = []
    cache = CallCache(tmp_path / "shared.sqlite")
    cache.put_many({CachedBackend(Recorder("x", []), cache).generate_keys(["e"], params)[0]: "cached e"})
    share = ChunkShare()
    known = set(cache.get_many(CachedBackend(Recorder("x", []), cache).generate_keys(prompts, params)))
    CachedBackend(Recorder("helper", log), cache, share=share).help_generate(prompts, params, known)
    owner = CachedBackend(Recorder("owner", log), cache, share=share)
    assert owner.generate(prompts, params) == expected
    assert (owner.hits, owner.misses) == (alone.hits, alone.misses) == (1, 8)
    assert {w for w, _, _ in log} == {"helper"}  # the helper ran first: it computed every chunk
    assert sorted((p, s) for _, p, s in log) == sorted((p, s) for _, p, s in alone_log)  # the same batches and seeds
    keys = owner.generate_keys(prompts, params)
    assert cache.get_many(keys) == alone_cache.get_many(keys)


def test_an_owner_and_a_helper_at_work_together_give_the_owners_results(tmp_path):
    import time

    from fspo.llm.base import GenerationParams
    from fspo.llm.cache import CachedBackend, CallCache, ChunkShare

    class Slow(Recorder):
        def generate(self, prompts, params):
            time.sleep(0.02)
            return super().generate(prompts, params)

    prompts = [f"q{i % 7}" for i in range(20)]
    params = GenerationParams(max_new_tokens=4, temperature=0.0)
    alone_cache = CallCache(tmp_path / "alone.sqlite")
    expected = CachedBackend(Slow("owner", []), alone_cache).generate(prompts, params)
    cache, share, log = CallCache(tmp_path / "shared.sqlite"), ChunkShare(), []
    helper = CachedBackend(Slow("helper", log), cache, share=share)
    owner = CachedBackend(Slow("owner", log), cache, share=share)
    got = side_by_side(
        [lambda: owner.generate(prompts, params), lambda: helper.help_generate(prompts, params, set())], parallel=True
    )[0]
    assert got == expected and owner.misses == 20
    assert len(log) == 10  # every chunk once, by one of them
    keys = owner.generate_keys(prompts, params)
    assert cache.get_many(keys) == alone_cache.get_many(keys)
