"""Segment attention (fspo.train.segments) equals SDPA with the dense shared-prefix / tree mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_packing import assert_grads_close, grads_of
from test_trees import tree_pairs

from fspo.data.truncation import TokenizedPair
from fspo.models.registry import load_model
from fspo.train import segments as seg
from fspo.train.packing import additive_mask, collate_shared_prefix, collate_trees, shared_prefix_logps, tree_groups


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny", seed=5)
    return model.float(), tok


def _dense(q, k, v, allowed):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask(allowed, q.dtype), enable_gqa=True)


def _qkv(rows: int, width: int, seed: int, heads: int = 6, kv_heads: int = 2, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads, width, dim, generator=g, requires_grad=True)
    k = torch.randn(rows, kv_heads, width, dim, generator=g, requires_grad=True)
    v = torch.randn(rows, kv_heads, width, dim, generator=g, requires_grad=True)
    return q, k, v


def _pair(prompt: int, chosen: int, rejected: int, base: int = 3) -> TokenizedPair:
    return TokenizedPair(tuple(range(base, base + prompt)), (1,) * chosen, (2,) * rejected, 1, "u")


def _check_batch(batch, seed: int) -> None:
    """On the real (non-padding) tokens: forward within 1e-5, input gradients within 1e-4."""
    rows, width = batch.input_ids.shape
    q, k, v = _qkv(rows, width, seed)
    lengths = [max(s.end for s in segs) for segs in batch.plan.rows]
    real = torch.stack([torch.arange(width) < n for n in lengths])
    weight = torch.randn(rows, q.shape[1], width, q.shape[3]) * real[:, None, :, None]
    want = _dense(q, k, v, batch.allowed)
    (want * weight).sum().backward()
    want_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    got = seg.segment_attention(q, k, v, batch.plan, None)
    (got * weight).sum().backward()
    mask = real[:, None, :, None]
    assert torch.allclose(got * mask, want * mask, atol=1e-5)
    for g, w in zip((q.grad, k.grad, v.grad), want_grads):
        assert torch.allclose(g, w, atol=1e-4)


def test_shared_prefix_rows_and_packed():
    pairs = [_pair(7, 3, 5), _pair(2, 1, 1), _pair(11, 4, 2)]
    _check_batch(collate_shared_prefix(pairs, 0, "rows"), 0)
    _check_batch(collate_shared_prefix(pairs, 0, "packed"), 1)


def test_tree_rows():
    pairs = tree_pairs(64, seed=3)
    _check_batch(collate_trees(pairs, tree_groups(pairs, 4), 0), 2)


@settings(max_examples=40, deadline=None)
@given(
    trunk=st.integers(1, 12),
    branches=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_any_tree_shape(trunk, branches, seed):
    """Trees of any shape (a query whose prompt is only the trunk included) equal the dense mask."""
    shots = tuple(range(3, 3 + trunk))
    pairs = [
        TokenizedPair(shots + tuple(range(100 + 10 * b, 100 + 10 * b + rest)), (1,) * c, (2,) * r, 1, "u")
        for b, (rest, c, r) in enumerate(branches)
    ]
    _check_batch(collate_trees(pairs, [list(range(len(pairs)))], 0), seed)


def test_model_logps_and_grads_match_dense_mask(tiny, monkeypatch):
    """The same log-probs and parameter gradients through a model with segments as with the mask,
    and the segments are really used (SDPA models only)."""
    model, _ = tiny
    assert model.config._attn_implementation == "sdpa"
    pairs = tree_pairs(model.config.vocab_size)
    ref = (torch.zeros(len(pairs)), torch.zeros(len(pairs)))
    calls: list[int] = []
    real = seg.segment_attention
    for batch in (collate_shared_prefix(pairs, 0), collate_trees(pairs, tree_groups(pairs, 4), 0)):
        monkeypatch.setattr(seg, "segment_attention", lambda *a: calls.append(1) or real(*a))
        g1 = grads_of(model, lambda batch=batch: shared_prefix_logps(model, batch, "mean", segments=True), ref)
        assert calls, "the segment path was not taken"
        calls.clear()
        g0 = grads_of(model, lambda batch=batch: shared_prefix_logps(model, batch, "mean", segments=False), ref)
        assert not calls
        monkeypatch.setattr(seg, "segment_attention", real)
        with torch.no_grad():
            c1, r1 = shared_prefix_logps(model, batch, "mean", segments=True)
            c0, r0 = shared_prefix_logps(model, batch, "mean", segments=False)
        assert torch.allclose(c1, c0, atol=1e-5) and torch.allclose(r1, r0, atol=1e-5)
        assert_grads_close(g1, g0)


def test_other_calls_keep_transformers_sdpa(tiny, monkeypatch):
    """A mask without a plan (generation, scoring with segments off, any other model) never reaches
    the segments."""
    model, _ = tiny
    seg.install()
    monkeypatch.setattr(seg, "segment_attention", lambda *a: pytest.fail("segments used without a plan"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        model(input_ids=ids)
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
    batch = collate_shared_prefix([_pair(4, 2, 2)], 0)
    with torch.no_grad():
        shared_prefix_logps(model, batch, segments=False)


def test_plan_row_count_checked():
    q, k, v = _qkv(2, 5, 0)
    with pytest.raises(ValueError, match="segment plan has 1 rows"):
        seg.segment_attention(q, k, v, seg.SegmentPlan([(seg.Segment(0, 5),)]), None)
