"""Shared-prefix batches equal the naive two-sequence path: log-probs (1e-4 abs) and gradients (1e-4 relative)."""

from __future__ import annotations

import random

import pytest
import torch

from fspo.data.truncation import TokenizedPair
from fspo.models.registry import load_model
from fspo.train.batching import pair_logps, pair_tokens
from fspo.train.losses import log_ratio_margin, preference_loss
from fspo.train.packing import (
    CHOSEN,
    LAYOUTS,
    REJECTED,
    collate_shared_prefix,
    packed_pair_logps,
    supports_shared_prefix,
)


def random_pairs(vocab: int, shapes, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def ids(n):
        return tuple(rng.randrange(3, vocab) for _ in range(n))

    return [TokenizedPair(ids(p), ids(c), ids(r), 0, f"u{i}") for i, (p, c, r) in enumerate(shapes)]


SHAPES = [(20, 5, 9), (7, 12, 3), (33, 1, 1), (1, 4, 6)]  # different lengths in one batch, a 1-token prompt


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny", seed=1)
    return model.float(), tok


@pytest.fixture(scope="module")
def pairs(tiny):
    model, _ = tiny
    return random_pairs(model.config.vocab_size, SHAPES)


def test_mask_and_positions():
    pair = TokenizedPair((5, 6, 7), (8, 9), (10, 11, 12), 0, "u")
    b = collate_shared_prefix([pair], pad_id=0)
    assert b.input_ids[0].tolist() == [5, 6, 7, 8, 9, 10, 11, 12]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]  # rejected restarts after the prompt
    allowed = b.allowed[0, 0]
    branch = torch.tensor([0, 0, 0, CHOSEN, CHOSEN, REJECTED, REJECTED, REJECTED])
    for q in range(8):
        for k in range(8):
            want = k <= q and not (branch[q] == REJECTED and branch[k] == CHOSEN)
            assert bool(allowed[q, k]) == want, (q, k)
    # predictors: last prompt token (for both first tokens), chosen[0], rejected[0], rejected[1]
    assert b.keep[0].nonzero().flatten().tolist() == [2, 3, 5, 6]
    assert b.target.tolist() == [8, 9, 10, 11, 12]
    assert b.src.tolist() == [0, 1, 0, 2, 3]
    assert b.tokens == 8 == pair_tokens([pair], shared_prefix=True)


def test_packed_layout_is_block_diagonal():
    a = TokenizedPair((1, 2), (3,), (4,), 0, "a")
    c = TokenizedPair((5,), (6, 7), (8,), 0, "b")
    b = collate_shared_prefix([a, c], pad_id=0, layout="packed")
    assert b.input_ids.shape == (1, 8)
    assert b.position_ids[0].tolist() == [0, 1, 2, 2, 0, 1, 2, 1]
    allowed = b.allowed[0, 0]
    assert not allowed[4:, :4].any() and not allowed[:4, 4:].any()  # pairs never see each other


def naive_and_shared(model, pairs, pad_id, reduction, layout):
    naive = pair_logps(model, pairs, pad_id, reduction, "cpu")
    shared = packed_pair_logps(model, pairs, pad_id, reduction, "cpu", layout=layout)
    return naive, shared


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_logps_equal_naive(tiny, pairs, layout, reduction):
    model, tok = tiny
    with torch.no_grad():
        (nc, nr), (sc, sr) = naive_and_shared(model, pairs, tok.pad_token_id, reduction, layout)
    torch.testing.assert_close(sc, nc, atol=1e-4, rtol=0)
    torch.testing.assert_close(sr, nr, atol=1e-4, rtol=0)


def test_eager_attention_equal_naive(pairs):
    model, tok = load_model("tiny", seed=2)
    model.set_attn_implementation("eager")
    assert supports_shared_prefix(model)
    with torch.no_grad():
        (nc, nr), (sc, sr) = naive_and_shared(model, pairs, tok.pad_token_id, "sum", "rows")
    torch.testing.assert_close(sc, nc, atol=1e-4, rtol=0)
    torch.testing.assert_close(sr, nr, atol=1e-4, rtol=0)


def grads_of(model, logps_fn, ref):
    model.zero_grad(set_to_none=True)
    pc, pr = logps_fn()
    loss = preference_loss("ipo", log_ratio_margin(pc, pr, *ref), 0.1).mean() + 0.1 * pr.sum()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(a: dict, b: dict, rel: float = 1e-4):
    assert a.keys() == b.keys() and a
    for name in a:
        scale = a[name].norm().clamp(min=1e-12)
        assert float((a[name] - b[name]).norm() / scale) < rel, name


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_grads_equal_naive(tiny, pairs, layout, reduction):
    model, tok = tiny
    pad = tok.pad_token_id
    ref = (torch.tensor([-40.0, -30.0, -20.0, -10.0]), torch.tensor([-35.0, -10.0, -12.0, -20.0]))
    if reduction == "mean":
        ref = tuple(r / 8 for r in ref)
    g_naive = grads_of(model, lambda: pair_logps(model, pairs, pad, reduction, "cpu"), ref)
    g_shared = grads_of(model, lambda: packed_pair_logps(model, pairs, pad, reduction, "cpu", layout=layout), ref)
    assert_grads_close(g_naive, g_shared)


def test_gradient_checkpointing_same_grads(pairs):
    model, tok = load_model("tiny", seed=5)
    pad = tok.pad_token_id
    ref = (torch.zeros(4), torch.zeros(4))
    model.train()
    plain = grads_of(model, lambda: packed_pair_logps(model, pairs, pad, "mean", "cpu"), ref)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt = grads_of(model, lambda: packed_pair_logps(model, pairs, pad, "mean", "cpu"), ref)
    assert_grads_close(plain, ckpt)


def test_lora_model_equal_naive(pairs):
    from peft import LoraConfig, get_peft_model

    model, tok = load_model("tiny", seed=6)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    assert supports_shared_prefix(lora)
    pad = tok.pad_token_id
    ref = (torch.zeros(4), torch.zeros(4))
    g_naive = grads_of(lora, lambda: pair_logps(lora, pairs, pad, "sum", "cpu"), ref)
    g_shared = grads_of(lora, lambda: packed_pair_logps(lora, pairs, pad, "sum", "cpu"), ref)
    assert any("lora" in n for n in g_naive)
    assert_grads_close(g_naive, g_shared)
    with lora.disable_adapter(), torch.no_grad():  # the reference path of LoRA training
        (nc, nr), (sc, sr) = naive_and_shared(lora, pairs, pad, "sum", "rows")
    torch.testing.assert_close(sc, nc, atol=1e-4, rtol=0)


def test_unsupported_attention_falls_back(pairs, monkeypatch):
    model, tok = load_model("tiny", seed=7)
    with torch.no_grad():
        want = pair_logps(model, pairs, tok.pad_token_id, "mean", "cpu")
    called = []
    import fspo.train.packing as packing

    monkeypatch.setattr(packing, "collate_shared_prefix", lambda *a, **k: called.append(1))
    monkeypatch.setattr(packing, "supports_shared_prefix", lambda m: False)
    with torch.no_grad():
        got = pair_logps(model, pairs, tok.pad_token_id, "mean", "cpu", shared_prefix=True)
    assert not called
    torch.testing.assert_close(got[0], want[0])
    assert not supports_shared_prefix(object())


def test_trainer_stage_loss_same_with_shared_prefix(pairs):
    from fspo.train.config import TrainConfig
    from fspo.train.trainer import stage_loss

    policy, tok = load_model("tiny", seed=8)
    ref, _ = load_model("tiny", seed=9)
    cfg = TrainConfig()
    out = {}
    for shared in (False, True):
        cfg.optim.shared_prefix = shared
        loss, metrics, n_tok = stage_loss("ipo", policy, ref, pairs, cfg, tok.pad_token_id, "cpu")
        out[shared] = (loss.item(), metrics["logps/rejected"], n_tok)
    assert out[True][0] == pytest.approx(out[False][0], abs=1e-4)
    assert out[True][1] == pytest.approx(out[False][1], abs=1e-4)
    assert out[True][2] < out[False][2]  # the prompt is processed once instead of twice
