"""Shared-shot episode trees equal separate episodes: log-probs (1e-4 abs) and gradients (1e-4 relative), fp32."""

from __future__ import annotations

import random

import pytest
import torch
from test_packing import assert_grads_close, grads_of

from fspo.data.truncation import TokenizedPair
from fspo.models.registry import load_model
from fspo.train.batching import pair_logps, pair_tokens
from fspo.train.packing import (
    CHOSEN,
    PROMPT,
    REJECTED,
    collate_shared_prefix,
    collate_trees,
    tree_groups,
    tree_pair_logps,
)


def tree_pairs(vocab: int, seed: int = 0) -> list[TokenizedPair]:
    """Two users: u0 with 3 queries on one shot prefix (one query's prompt is the shot prefix plus
    nothing but one token), u1 with 2 queries, and a lone pair; shuffled so trees are not neighbours."""
    rng = random.Random(seed)

    def ids(n):
        return tuple(rng.randrange(3, vocab) for _ in range(n))

    shots0, shots1 = ids(40), ids(25)
    out = [
        TokenizedPair(shots0 + ids(6), ids(5), ids(9), 4, "u0"),
        TokenizedPair(shots0 + ids(3), ids(1), ids(4), 4, "u0"),
        TokenizedPair(shots0 + ids(1), ids(7), ids(2), 4, "u0"),
        TokenizedPair(shots1 + ids(8), ids(3), ids(3), 2, "u1"),
        TokenizedPair(shots1 + ids(4), ids(6), ids(1), 2, "u1"),
        TokenizedPair(ids(12), ids(4), ids(5), 0, "u2"),
    ]
    rng.shuffle(out)
    return out


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny", seed=11)
    return model.float(), tok


@pytest.fixture(scope="module")
def pairs(tiny):
    return tree_pairs(tiny[0].config.vocab_size)


def test_tree_layout_mask_and_positions():
    a = TokenizedPair((1, 2, 3, 4), (5, 6), (7,), 1, "u")
    b = TokenizedPair((1, 2, 3, 8, 9), (10,), (11, 12), 1, "u")
    batch = collate_trees([a, b], [[0, 1]], pad_id=0)
    assert batch.input_ids[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    # positions continue after the trunk (1 2 3) in every branch; rejected restarts after its prompt
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 4, 3, 4, 5, 5, 6]
    branch = [-1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    part = [PROMPT] * 4 + [CHOSEN] * 2 + [REJECTED] + [PROMPT] * 2 + [CHOSEN] + [REJECTED] * 2
    allowed = batch.allowed[0, 0]
    for q in range(12):
        for k in range(12):
            visible = branch[k] == -1 or (branch[k] == branch[q] and not (part[q] == REJECTED and part[k] == CHOSEN))
            assert bool(allowed[q, k]) == (k <= q and visible), (q, k)
    # predictors: a's last prompt token (3) for 5 and 7; 5 for 6; b's last prompt token (8) for 10 and 11; 10 for 12
    assert batch.target.tolist() == [5, 6, 7, 10, 11, 12]
    kept = batch.keep[0].nonzero().flatten().tolist()
    assert kept == [3, 4, 8, 10]
    assert [kept[i] for i in batch.src.tolist()] == [3, 4, 3, 8, 8, 10]
    assert batch.segment.tolist() == [0, 0, 2, 1, 3, 3]
    assert batch.tokens == 12 == pair_tokens([a, b], shared_prefix=True, queries_per_tree=2)


def test_one_pair_tree_is_the_shared_prefix_row():
    a = TokenizedPair((5, 6, 7), (8, 9), (10, 11, 12), 0, "u")
    tree, row = collate_trees([a], [[0]], pad_id=0), collate_shared_prefix([a], pad_id=0)
    for name in ("input_ids", "position_ids", "allowed", "keep", "src", "target", "segment", "counts"):
        assert torch.equal(getattr(tree, name), getattr(row, name)), name


def test_groups_follow_the_common_prompt_start(pairs):
    groups = tree_groups(pairs, max_queries=8)
    users = sorted(sorted(pairs[i].user_id for i in g) for g in groups)
    assert users == [["u0", "u0", "u0"], ["u1", "u1"], ["u2"]]
    assert all(len(g) <= 2 for g in tree_groups(pairs, max_queries=2))
    with pytest.raises(ValueError):
        collate_trees(pairs, [[0, 1]], pad_id=0)  # not every pair


def test_trees_save_tokens(pairs):
    separate = pair_tokens(pairs, shared_prefix=True)
    trees = pair_tokens(pairs, shared_prefix=True, queries_per_tree=4)
    assert trees == separate - 2 * 40 - 1 * 25  # u0's shots once instead of 3 times, u1's once instead of twice


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("max_queries", [2, 3, 8])
def test_tree_logps_equal_separate_episodes(tiny, pairs, reduction, max_queries):
    model, tok = tiny
    with torch.no_grad():
        nc, nr = pair_logps(model, pairs, tok.pad_token_id, reduction, "cpu")  # two plain rows per pair
        tc, tr = pair_logps(model, pairs, tok.pad_token_id, reduction, "cpu", True, max_queries)
    torch.testing.assert_close(tc, nc, atol=1e-4, rtol=0)
    torch.testing.assert_close(tr, nr, atol=1e-4, rtol=0)


def test_any_grouping_is_exact(tiny, pairs):
    """Even pairs of different users in one tree (trunk: their common start, maybe empty) are exact."""
    model, tok = tiny
    with torch.no_grad():
        nc, nr = pair_logps(model, pairs, tok.pad_token_id, "sum", "cpu")
        batch = collate_trees(pairs, [[0, 1, 2], [3, 4, 5]], tok.pad_token_id)
        from fspo.train.packing import shared_prefix_logps

        tc, tr = shared_prefix_logps(model, batch, "sum")
    torch.testing.assert_close(tc, nc, atol=1e-4, rtol=0)
    torch.testing.assert_close(tr, nr, atol=1e-4, rtol=0)


def test_eager_attention_trees_equal_separate(pairs):
    model, tok = load_model("tiny", seed=12)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        nc, nr = pair_logps(model, pairs, tok.pad_token_id, "mean", "cpu")
        tc, tr = tree_pair_logps(model, pairs, tok.pad_token_id, "mean", "cpu", 4)
    torch.testing.assert_close(tc, nc, atol=1e-4, rtol=0)
    torch.testing.assert_close(tr, nr, atol=1e-4, rtol=0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_tree_grads_equal_separate_episodes(tiny, pairs, reduction):
    model, tok = tiny
    pad = tok.pad_token_id
    n = len(pairs)
    ref = (torch.linspace(-40.0, -10.0, n), torch.linspace(-12.0, -35.0, n))
    if reduction == "mean":
        ref = tuple(r / 8 for r in ref)
    g_naive = grads_of(model, lambda: pair_logps(model, pairs, pad, reduction, "cpu"), ref)
    g_tree = grads_of(model, lambda: pair_logps(model, pairs, pad, reduction, "cpu", True, 4), ref)
    assert_grads_close(g_naive, g_tree)


def test_lora_trees_equal_separate(pairs):
    from peft import LoraConfig, get_peft_model

    model, tok = load_model("tiny", seed=13)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    pad = tok.pad_token_id
    ref = (torch.zeros(len(pairs)), torch.zeros(len(pairs)))
    g_naive = grads_of(lora, lambda: pair_logps(lora, pairs, pad, "sum", "cpu"), ref)
    g_tree = grads_of(lora, lambda: pair_logps(lora, pairs, pad, "sum", "cpu", True, 4), ref)
    assert_grads_close(g_naive, g_tree)


# --- tree episodes, their tokenization and training -------------------------------------------


def test_tree_episodes_share_shots_and_keep_every_query():
    from collections import Counter

    from conftest import make_records

    from fspo.data.episodes import build_episodes, build_tree_episodes

    rows = make_records(n_users=3, per_user=8)
    trees, summary = build_tree_episodes(rows, n_shots=3, queries_per_tree=4, resamples=2, seed=1)
    flat, plain = [e for t in trees for e in t], build_episodes(rows, n_shots=3, resamples=2, seed=1)[0]
    # every row is the query of `resamples` episodes, as without trees
    assert Counter(e.query for e in flat) == Counter(e.query for e in plain)
    assert summary.episodes == len(flat) and summary.users_full == 3
    for tree in trees:
        assert 1 <= len(tree) <= 4
        assert len({(e.user_id, e.shots) for e in tree}) == 1  # one user, one set of shots
        assert all(len(e.shots) == 3 for e in tree)
        asked = {e.query.prompt for e in tree}
        assert not asked & {s.prompt for s in tree[0].shots}  # no shot asks a question of the tree
    again, _ = build_tree_episodes(list(reversed(rows)), n_shots=3, queries_per_tree=4, resamples=2, seed=1)
    assert again == trees  # deterministic, independent of input order


def test_tree_budget_is_per_branch_and_shots_stay_shared(tiny):
    from conftest import make_records

    from fspo.data.episodes import Episode
    from fspo.data.truncation import EpisodeTokenizer
    from fspo.train.data import tokenize_trees

    _, tok = tiny
    rows = make_records(n_users=1, per_user=6)
    long_answer = rows[0].__class__(rows[0].user_id, "Question 0 for everyone?", "word " * 40, "no.")
    shots = tuple(rows[2:6])
    tree = [Episode("u0", shots, long_answer), Episode("u0", shots, rows[1])]
    enc = EpisodeTokenizer(tok, 10_000)
    alone = [enc.tokenize(e) for e in tree]
    budget = alone[0].length - 20  # the long-answer branch must drop shots, the other would not
    enc = EpisodeTokenizer(tok, budget)
    assert enc.tokenize(tree[1]).n_shots == 4 and enc.tokenize(tree[0]).n_shots < 4
    pairs, trees, report = tokenize_trees(enc, [tree])
    assert trees == [[0, 1]] and pairs[0].n_shots == pairs[1].n_shots == enc.tokenize(tree[0]).n_shots
    assert all(p.length <= budget for p in pairs)  # shots + query + answer <= max_length in every branch
    assert report.kept == 2


def test_training_with_trees(dataset, tmp_path):
    import json

    from test_trainer import _cfg

    from fspo.train.trainer import train

    cfg = _cfg(dataset, tmp_path / "run", **{"optim.steps": 3, "data.queries_per_tree": 3, "optim.batch_size": 1})
    out = train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and "eval/reward_accuracy" in rows[-1]
    from fspo.train.fingerprint import read_fingerprint

    assert read_fingerprint(out) is not None
    record = json.loads((out / "fspo_run.json").read_text())
    assert any("shared-shot trees" in line for line in record["data_summary"])


def test_stage_loss_same_with_trees():
    from fspo.train.config import TrainConfig
    from fspo.train.trainer import stage_loss

    policy, tok = load_model("tiny", seed=8)
    ref, _ = load_model("tiny", seed=9)
    pairs = tree_pairs(policy.config.vocab_size, seed=3)
    cfg = TrainConfig()
    out = {}
    for k in (1, 4):
        cfg.data.queries_per_tree = k
        loss, metrics, n_tok = stage_loss("ipo", policy, ref, pairs, cfg, tok.pad_token_id, "cpu")
        out[k] = (loss.item(), metrics["logps/rejected"], n_tok)
    assert out[4][0] == pytest.approx(out[1][0], abs=1e-4)
    assert out[4][1] == pytest.approx(out[1][1], abs=1e-4)
    assert out[4][2] < out[1][2]  # the shots run once per tree


def test_reward_accuracy_scoring_with_trees_equals_separate_episodes(tmp_path):
    from conftest import make_records

    from fspo.data.episodes import build_tree_episodes
    from fspo.eval.generate import ModelPool, select_episodes
    from fspo.eval.reward_accuracy import Scorer, margins
    from fspo.llm.cache import CallCache

    rows = make_records(n_users=2, per_user=6)
    shared = [e for t in build_tree_episodes(rows, n_shots=2, queries_per_tree=4, resamples=1, seed=0)[0] for e in t]
    per_query = select_episodes(rows, 2, seed=0)  # the eval's episodes: shots sampled per query
    pool = ModelPool()
    for eps in (shared, per_query):
        got = {}
        for k in (1, 8):
            cache = CallCache(tmp_path / f"{k}-{len(got)}-{id(eps)}.sqlite")
            got[k] = margins(Scorer("tiny", None, "fspo"), eps, pool, cache, 512, {}, 3, queries_per_tree=k)
        assert got[8][1:] == got[1][1:]  # same episodes, users and shots kept
        assert got[8][0] == pytest.approx(got[1][0], abs=1e-4)
        assert [m > 0 for m in got[8][0]] == [m > 0 for m in got[1][0]]
