"""Reward accuracy: scoring matches the trainer's log-probs, caching, and hand-made margins."""

from __future__ import annotations

import pytest
import torch

from fspo.data.schema import PreferenceRecord
from fspo.data.truncation import EpisodeTokenizer
from fspo.eval.generate import ModelPool, select_episodes
from fspo.eval.reward_accuracy import Scorer, accuracy_point, margins, reward_accuracy_curve, sequence_logps
from fspo.llm.cache import CallCache
from fspo.train.batching import collate_pairs, completion_logps, split_pair_logps


def records():
    rows = []
    for u, good, bad in (("u1", "great", "awful"), ("u2", "awful", "great")):
        for i in range(5):
            rows.append(PreferenceRecord(u, f"Review item {i}.", f"It is {good} {i}.", f"It is {bad} {i}.", "test"))
    return rows


def test_accuracy_point_hand_computed():
    pt = accuracy_point([0.3, -0.1, 0.0, 2.0], ["a", "a", "b", "b"], [2, 2, 1, 2])
    assert pt["correct"] == 2 and pt["n"] == 4  # a zero margin counts as wrong
    assert pt["accuracy"] == 0.5
    assert pt["users"] == 2
    assert pt["mean_margin"] == pytest.approx(0.55)
    assert pt["mean_shots_kept"] == pytest.approx(1.75)
    assert pt["ci"][0] < 0.5 < pt["ci"][1]


def test_scorer_metric_names():
    assert Scorer("tiny", None, "fspo").metric == "loglik"
    assert Scorer("runs/x", "tiny", "fspo").metric == "implicit_reward"


def test_select_episodes_same_queries_for_every_n():
    rows = records()
    by_n = {n: select_episodes(rows, n, seed=0, n_users=0, n_queries=3) for n in (0, 1, 2, 4)}
    queries = {n: [(e.user_id, e.query.prompt) for e in eps] for n, eps in by_n.items()}
    assert all(q == queries[0] for q in queries.values())
    assert len(queries[0]) == 6
    assert all(len(e.shots) == 2 for e in by_n[2])
    assert all(e.query.prompt not in {s.prompt for s in e.shots} for e in by_n[4])


def test_sequence_logps_match_trainer_and_are_cached(tmp_path):
    pool = ModelPool()
    cache = CallCache(tmp_path / "c.sqlite")
    model, tok = pool.get("tiny")
    eps = select_episodes(records(), 2, seed=0)[:3]
    pairs = [EpisodeTokenizer(tok, 512, "fspo").tokenize(e) for e in eps]
    got = sequence_logps("tiny", pairs, pool, cache, batch_size=2)
    with torch.no_grad():
        views = [p.preference_view() for p in pairs]  # the shared header is not scored
        want_c, want_r = split_pair_logps(completion_logps(model, collate_pairs(views, tok.pad_token_id), "sum"))
    for (c, r), wc, wr in zip(got, want_c, want_r):
        assert c[0] == pytest.approx(float(wc), abs=1e-4)
        assert r[0] == pytest.approx(float(wr), abs=1e-4)

    class NoModel(ModelPool):
        def get(self, spec):
            raise AssertionError("cached log-probs must not load the model")

    cold = NoModel()
    cold._tokenizers = pool._tokenizers
    assert sequence_logps("tiny", pairs, cold, cache) == got


def test_model_against_itself_has_zero_margin(tmp_path):
    # A "trained" model whose reference is itself: h = 0 exactly, so accuracy is 0 (ties are wrong).
    pool, cache = ModelPool(), CallCache(tmp_path / "c.sqlite")
    eps = select_episodes(records(), 1, seed=0)
    m, users, kept = margins(Scorer("tiny", "tiny", "fspo"), eps, pool, cache, 512, {})
    assert m and all(x == 0.0 for x in m)
    curve = reward_accuracy_curve(Scorer("tiny", None, "fspo"), {0: eps, 1: eps}, pool, cache, 512, {})
    assert curve["metric"] == "loglik" and set(curve["points"]) == {"0", "1"}
    assert curve["points"]["1"]["n"] == len(eps)


def test_scoring_keeps_the_dense_mask(tmp_path, monkeypatch):
    """Reward-accuracy scoring runs SDPA with the dense mask, not segments (fspo.train.segments), so
    the eval's log-probs keep the bits of earlier versions."""
    import fspo.train.segments as seg

    monkeypatch.setattr(seg, "segment_attention", lambda *a: pytest.fail("eval scoring used segments"))
    pool = ModelPool()
    _, tok = pool.get("tiny")
    pairs = [EpisodeTokenizer(tok, 512, "fspo").tokenize(e) for e in select_episodes(records(), 2, seed=0)[:2]]
    assert len(sequence_logps("tiny", pairs, pool, CallCache(tmp_path / "c.sqlite"))) == 2
