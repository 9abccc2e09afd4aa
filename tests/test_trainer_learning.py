"""Does ``train()`` learn, and learn what the docs say? (A trainer that never stepped, stepped the
wrong way, or mis-scaled a gradient would pass every test that only compares two runs.)"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fspo.config import load_config
from fspo.train.config import TrainConfig
from fspo.train.trainer import lr_lambda, train

FAST = {"model.name": "tiny", "data.max_length": 256, "progress": False}


def _cfg(data, out, **overrides) -> TrainConfig:
    return load_config(TrainConfig, None, {**FAST, "data.path": str(data), "out": str(out), **overrides})


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def separable(tmp_path):
    """Every user prefers "yes yes" to "no no": 4 training users, 2 held out."""
    folder = tmp_path / "separable"
    folder.mkdir()
    rows = [
        {
            "user_id": f"u{u}",
            "prompt": f"Question {q}?",
            "chosen": "yes yes",
            "rejected": "no no",
            "split": "train" if u < 4 else "test",
        }
        for u in range(6)
        for q in range(5)
    ]
    (folder / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_ipo_learns_a_separable_preference(separable, tmp_path):
    out = train(
        _cfg(
            separable,
            tmp_path / "run",
            **{"optim.steps": 8, "optim.lr": 1e-3, "optim.warmup_steps": 0, "eval_every": 0, "data.shots": 2},
        )
    )
    rows = [r for r in _rows(out) if r["step"] > 0]
    assert rows[0]["rewards/margins"] == 0.0 and rows[0]["rewards/accuracies"] == 0.0  # policy == reference: h = 0
    margins = [r["rewards/margins"] for r in rows]
    assert all(b > a for a, b in zip(margins, margins[1:])), margins  # rises every step
    assert margins[-1] > 0.05 and rows[-1]["rewards/accuracies"] == 1.0
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert rows[-1]["eval/reward_accuracy"] == 1.0 and rows[-1]["eval/margin"] > 0.05  # held-out users too


def test_grad_accumulation_2x1_equals_batch_2(dataset, tmp_path):
    common = {"optim.optimizer": "sgd", "optim.lr": 0.01, "optim.steps": 3, "optim.warmup_steps": 0, "eval_every": 0}
    common["optim.max_grad_norm"] = 0.0  # clipping would hide a gradient off by a constant factor
    one = train(_cfg(dataset, tmp_path / "batch2", **common, **{"optim.batch_size": 2}))
    two = train(_cfg(dataset, tmp_path / "accum2", **common, **{"optim.batch_size": 1, "optim.grad_accum": 2}))
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    from fspo.models.registry import load_model

    init = load_model("tiny")[0].state_dict()
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # the weights moved...
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6  # ...by the same step either way
    ra, rb = _rows(one), _rows(two)
    for x, y in zip(ra, rb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["rewards/margins"] == pytest.approx(
            y["rewards/margins"], abs=1e-6
        )


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("constant", [1 / 3, 2 / 3, 1, 1, 1, 1]),
        ("linear", [1 / 3, 2 / 3, 1, 0.75, 0.5, 0.25]),
        ("cosine", [1 / 3, 2 / 3, 1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
    ],
)
def test_lr_schedule_is_as_documented(schedule, expected):
    """docs/training.md: optimizer step s (1-based) of T with W warm-up steps uses lr·s/(W+1) for
    s ≤ W, then lr × 1 (constant), × (1 − p) (linear) or × ½(1 + cos πp) (cosine), p = (s−1−W)/(T−W)."""
    cfg = load_config(TrainConfig, None, {"optim.warmup_steps": 2, "optim.schedule": schedule})
    factor = lr_lambda(cfg, 6)
    assert [factor(k) for k in range(6)] == pytest.approx(expected)


def test_logged_lr_is_the_rate_each_step_used(dataset, tmp_path):
    """metrics.jsonl's lr of step s is the rate step s used (it was the next step's)."""
    overrides = {"optim.steps": 6, "optim.warmup_steps": 2, "optim.schedule": "linear", "optim.lr": 1e-3}
    out = train(_cfg(dataset, tmp_path / "run", **overrides, eval_every=0))
    logged = [r["lr"] for r in _rows(out)]
    assert logged == pytest.approx([1e-3 * f for f in (1 / 3, 2 / 3, 1, 0.75, 0.5, 0.25)])


def test_reference_model_stays_frozen(dataset, tmp_path, monkeypatch):
    from fspo.models import registry

    loaded = []
    original = registry.load_model

    def load_model(spec, dtype="float32", seed=0):
        model, tok = original(spec, dtype, seed=seed)
        loaded.append(model)
        return model, tok

    monkeypatch.setattr(registry, "load_model", load_model)
    out = train(_cfg(dataset, tmp_path / "run", **{"optim.steps": 3, "optim.lr": 1e-3, "eval_every": 0}))
    policy, ref = loaded  # the trained model, then the reference
    init = original("tiny")[0].state_dict()
    assert all(not p.requires_grad for p in ref.parameters())
    assert all(torch.equal(v, init[k]) for k, v in ref.state_dict().items())
    final = load_file(out / "final" / "model.safetensors")
    assert sum(not torch.equal(final[k], init[k]) for k in final) > len(final) // 2


# --- the loss itself, computed by hand on one batch -------------------------------------------------


def _logp(model, prompt, completion) -> float:
    """Mean log-prob of ``completion`` after ``prompt``: one unpadded forward, no fspo code."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    n = len(prompt)
    return sum(logprobs[n - 1 + t, tok].item() for t, tok in enumerate(completion)) / len(completion)


def _scored(pair):
    """(prompt, chosen, rejected) with the completions' common start moved into the prompt."""
    n = 0
    while n < min(len(pair.chosen_ids), len(pair.rejected_ids)) - 1 and pair.chosen_ids[n] == pair.rejected_ids[n]:
        n += 1
    return pair.prompt_ids + pair.chosen_ids[:n], pair.chosen_ids[n:], pair.rejected_ids[n:]


@pytest.fixture
def batch(dataset, tmp_path):
    from fspo.models.registry import load_model
    from fspo.train.data import prepare_training_data

    policy, tok = load_model("tiny", seed=0)
    ref, _ = load_model("tiny", seed=1)  # another reference, so h != 0
    cfg = _cfg(dataset, tmp_path / "unused")
    pairs = prepare_training_data(cfg.data, tok, 0).train[:3]
    assert all(_scored(p)[0] != p.prompt_ids for p in pairs)  # the scored part is not the whole answer
    return policy, ref, tok.pad_token_id, pairs, dataset, tmp_path


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_preference_loss_plus_sft_weight_by_hand(batch, weight):
    """IPO loss = mean (h − 1/(2β))² + W · mean(−s_θ(y_w)), s over the scored (differing) tokens."""
    from fspo.train.trainer import stage_loss

    policy, ref, pad, pairs, data, tmp = batch
    cfg = _cfg(data, tmp / "unused", **{"loss.sft_weight": weight, "loss.beta": 0.1})
    loss, metrics, _ = stage_loss("ipo", policy, ref, pairs, cfg, pad, "cpu")
    hs, nll = [], []
    for pair in pairs:
        prompt, chosen, rejected = _scored(pair)
        pc, pr = _logp(policy, prompt, chosen), _logp(policy, prompt, rejected)
        rc, rr = _logp(ref, prompt, chosen), _logp(ref, prompt, rejected)
        hs.append((pc - pr) - (rc - rr))
        nll.append(-pc)
    ipo = sum((h - 1 / (2 * 0.1)) ** 2 for h in hs) / len(hs)
    expected = ipo + weight * sum(nll) / len(nll)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["rewards/margins"] == pytest.approx(0.1 * sum(hs) / len(hs), abs=1e-5)


@pytest.mark.parametrize("rejected_too", [False, True])
def test_sft_loss_by_hand(batch, rejected_too):
    """SFT loss = mean over rows of −s_θ(y) over the whole completion (header included): chosen
    completions, plus rejected ones with --loss.sft_rejected."""
    from fspo.train.trainer import stage_loss

    policy, _, pad, pairs, data, tmp = batch
    cfg = _cfg(data, tmp / "unused", **{"loss.name": "sft", "loss.sft_rejected": rejected_too})
    loss, _, _ = stage_loss("sft", policy, None, pairs, cfg, pad, "cpu")
    completions = [p.chosen_ids for p in pairs] + ([p.rejected_ids for p in pairs] if rejected_too else [])
    prompts = [p.prompt_ids for p in pairs] * (2 if rejected_too else 1)
    expected = -sum(_logp(policy, p, c) for p, c in zip(prompts, completions)) / len(completions)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_description_weight_trains_the_whole_chosen_completion_by_hand(dataset, tmp_path, weight):
    """Under rat, IPO loss + W_d · mean(−s_θ(whole chosen completion)): the RAT description (shared
    by both completions, so outside the preference loss and sft_weight) is trained too."""
    from fspo.models.registry import load_model
    from fspo.train.data import prepare_training_data
    from fspo.train.trainer import stage_loss

    policy, tok = load_model("tiny", seed=0)
    ref, _ = load_model("tiny", seed=1)
    overrides = {"data.layout": "rat", "loss.beta": 0.1, "loss.description_weight": weight}
    cfg = _cfg(dataset, tmp_path / "unused", **overrides)
    pairs = prepare_training_data(cfg.data, tok, 0).train[:3]
    description = tok.encode("User 0 likes short answers.", add_special_tokens=False)
    for pair in pairs:
        prompt, _, _ = _scored(pair)
        shared = prompt[len(pair.prompt_ids) :]
        assert len(shared) > len(description)  # the description is in the shared start, not scored by IPO
    loss, metrics, _ = stage_loss("ipo", policy, ref, pairs, cfg, tok.pad_token_id, "cpu")
    hs, full_nll = [], []
    for pair in pairs:
        prompt, chosen, rejected = _scored(pair)
        pc, pr = _logp(policy, prompt, chosen), _logp(policy, prompt, rejected)
        rc, rr = _logp(ref, prompt, chosen), _logp(ref, prompt, rejected)
        hs.append((pc - pr) - (rc - rr))
        full_nll.append(-_logp(policy, pair.prompt_ids, pair.chosen_ids))
    ipo = sum((h - 1 / (2 * 0.1)) ** 2 for h in hs) / len(hs)
    expected = ipo + weight * sum(full_nll) / len(full_nll)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    if weight:
        assert metrics["nll/full_chosen"] == pytest.approx(sum(full_nll) / len(full_nll), rel=1e-5)
    else:
        assert "nll/full_chosen" not in metrics
