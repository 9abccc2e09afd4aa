"""Loss functions: hand-computed numbers, and parity with TRL's DPOTrainer on the same tiny model and batch."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fspo.data.truncation import TokenizedPair
from fspo.train.batching import pair_logps
from fspo.train.losses import (
    dpo_loss,
    ipo_loss,
    log_ratio_margin,
    preference_loss,
    reduce_logps,
    sft_loss,
    token_logps,
)

# ---------------------------------------------------------------- hand-computed numbers


def test_token_logps_hand_computed():
    # uniform logits over 4 tokens: every label has log-prob -log 4
    logits = torch.zeros(2, 3, 4)
    labels = torch.tensor([[1, 2, -100], [-100, -100, 3]])
    sums, counts = token_logps(logits, labels)
    assert counts.tolist() == [2, 1]
    assert sums.tolist() == pytest.approx([-2 * math.log(4), -math.log(4)])
    # one peaked row: logits [log 3, 0, 0, 0] -> p(0) = 3/6 = 0.5
    logits = torch.tensor([[[math.log(3), 0.0, 0.0, 0.0]]])
    sums, counts = token_logps(logits, torch.tensor([[0]]))
    assert sums.item() == pytest.approx(math.log(0.5))
    sums, _ = token_logps(logits, torch.tensor([[1]]))
    assert sums.item() == pytest.approx(math.log(1 / 6))


def test_reductions_hand_computed():
    sums, counts = torch.tensor([-6.0, -3.0, 0.0]), torch.tensor([3, 1, 0])
    assert reduce_logps(sums, counts, "sum").tolist() == [-6.0, -3.0, 0.0]
    assert reduce_logps(sums, counts, "mean").tolist() == [-2.0, -3.0, 0.0]  # empty rows: divide by 1, not 0
    with pytest.raises(ValueError):
        reduce_logps(sums, counts, "max")


def test_sft_loss_hand_computed():
    assert sft_loss(torch.tensor([-2.0, -4.0])).item() == pytest.approx(3.0)


def test_margin_dpo_ipo_hand_computed():
    h = log_ratio_margin(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]))
    assert h.item() == pytest.approx(1.5)  # (-1 + 3) - (-2 + 2.5)
    # DPO, beta 0.1: -log sigmoid(0.15)
    assert dpo_loss(h, 0.1).item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.15))))
    # conservative DPO, eps 0.2: -0.8 log s(0.15) - 0.2 log s(-0.15)
    want = -0.8 * math.log(1 / (1 + math.exp(-0.15))) - 0.2 * math.log(1 / (1 + math.exp(0.15)))
    assert dpo_loss(h, 0.1, 0.2).item() == pytest.approx(want)
    # at h = 0 DPO is log 2 for any beta and any eps
    assert dpo_loss(torch.zeros(1), 3.0, 0.3).item() == pytest.approx(math.log(2))
    # IPO: (h - 1/(2 beta))^2 = (1.5 - 5)^2
    assert ipo_loss(h, 0.1).item() == pytest.approx(12.25)
    assert ipo_loss(torch.zeros(1), 0.01).item() == pytest.approx(2500.0)
    assert preference_loss("ipo", h, 0.1).item() == pytest.approx(12.25)
    assert preference_loss("dpo", h, 0.1).item() == pytest.approx(dpo_loss(h, 0.1).item())
    with pytest.raises(ValueError):
        preference_loss("kto", h, 0.1)


def test_reduction_changes_ipo_target_scale():
    # the same token log-probs give a length-dependent margin under sum and a per-token margin under mean
    sums = torch.tensor([-4.0, -12.0])  # chosen: 2 tokens, rejected: 6 tokens
    counts = torch.tensor([2, 6])
    ref = torch.tensor([-5.0, -11.0])
    pc, pr = reduce_logps(sums, counts, "sum")
    rc, rr = reduce_logps(ref, counts, "sum")
    assert log_ratio_margin(pc, pr, rc, rr).item() == pytest.approx(2.0)  # (-4+12) - (-5+11)
    pc, pr = reduce_logps(sums, counts, "mean")
    rc, rr = reduce_logps(ref, counts, "mean")
    assert log_ratio_margin(pc, pr, rc, rr).item() == pytest.approx((-2 + 2) - (-2.5 + 11 / 6))


# ---------------------------------------------------------------- parity with TRL's DPOTrainer


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("trl")  # only the parity tests need TRL; the hand-computed ones above always run
    from fspo.models.registry import load_model

    model, tok = load_model("tiny", seed=3)
    ref, _ = load_model("tiny", seed=4)  # a different reference, so the log-ratios are not zero
    return model.eval(), ref.eval(), tok


@pytest.fixture(scope="module")
def pairs(tiny):
    _, _, tok = tiny

    def enc(text):
        return tuple(tok(text, add_special_tokens=False)["input_ids"])

    eos = (tok.eos_token_id,)
    rows = [
        ("# Example 1\n## Question \nWrite a review of the movie.\n", "A wonderful film.", "A dull film."),
        ("What is the best way to learn to cook?\n", "Start with simple recipes.", "Practice every day, slowly."),
        ("The quick brown fox jumps over the lazy dog.\n", "Explain it like I am five.", "No."),
    ]
    return [TokenizedPair(enc(p), enc(c) + eos, enc(r) + eos, 0, f"u{i}") for i, (p, c, r) in enumerate(rows)]


def _trl_loss(model, ref, tok, pairs, tmp_path, **config):
    """TRL's DPO loss on exactly our token ids: the dataset is fed pre-tokenized (TRL's tokenization is skipped)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    # fspo scores only where the completions differ (TokenizedPair.preference_view); a TRL user gets
    # the same by putting the shared start ("A" of "A wonderful film.") in the prompt.
    pairs = [p.preference_view() for p in pairs]

    class PreTokenizedDPOTrainer(DPOTrainer):
        # TRL 1.16 always re-tokenizes text columns in _prepare_dataset; our rows already hold TRL's
        # tokenized schema (prompt_ids / chosen_ids / rejected_ids), so the step is skipped and the
        # collator sees our exact ids.
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    data = Dataset.from_list(
        [
            {"prompt_ids": list(p.prompt_ids), "chosen_ids": list(p.chosen_ids), "rejected_ids": list(p.rejected_ids)}
            for p in pairs
        ]
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        max_length=None,
        per_device_train_batch_size=len(pairs),
        dataset_num_proc=None,
        save_strategy="no",
        logging_strategy="no",
        **config,
    )
    trainer = PreTokenizedDPOTrainer(
        model=copy.deepcopy(model), ref_model=copy.deepcopy(ref), args=args, train_dataset=data, processing_class=tok
    )
    batch = trainer.data_collator([data[i] for i in range(len(pairs))])
    # the same token ids reach both implementations
    for i, p in enumerate(pairs):
        n = len(p.prompt_ids) + len(p.chosen_ids)
        assert batch["input_ids"][i, :n].tolist() == list(p.prompt_ids + p.chosen_ids)
        m = len(p.prompt_ids) + len(p.rejected_ids)
        assert batch["input_ids"][len(pairs) + i, :m].tolist() == list(p.prompt_ids + p.rejected_ids)
        assert int(batch["completion_mask"][i].sum()) == len(p.chosen_ids)
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def _our_loss(model, ref, tok, pairs, name, reduction, beta, label_smoothing=0.0, shared_prefix=False):
    with torch.no_grad():
        pc, pr = pair_logps(model, pairs, tok.pad_token_id, reduction, "cpu", shared_prefix)
        rc, rr = pair_logps(ref, pairs, tok.pad_token_id, reduction, "cpu", shared_prefix)
    h = log_ratio_margin(pc, pr, rc, rr)
    return preference_loss(name, h, beta, label_smoothing).mean().item()


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_ipo_mean_matches_trl_ipo(tiny, pairs, tmp_path, shared_prefix):
    model, ref, tok = tiny
    ours = _our_loss(model, ref, tok, pairs, "ipo", "mean", 0.1, shared_prefix=shared_prefix)
    theirs = _trl_loss(model, ref, tok, pairs, tmp_path, loss_type="ipo", beta=0.1)
    assert ours == pytest.approx(theirs, abs=1e-5, rel=1e-6)
    assert ours != pytest.approx(_our_loss(model, ref, tok, pairs, "ipo", "sum", 0.1), abs=1e-3)  # not trivially equal


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_dpo_sum_matches_trl_sigmoid(tiny, pairs, tmp_path, shared_prefix):
    model, ref, tok = tiny
    ours = _our_loss(model, ref, tok, pairs, "dpo", "sum", 0.5, shared_prefix=shared_prefix)
    theirs = _trl_loss(model, ref, tok, pairs, tmp_path, loss_type="sigmoid", beta=0.5)
    assert ours == pytest.approx(theirs, abs=1e-5, rel=1e-6)
    assert abs(ours - math.log(2)) > 1e-3  # the reference differs from the policy: a non-trivial loss


def test_trl_sigmoid_ignores_label_smoothing(tiny, pairs, tmp_path):
    """TRL 1.16's ``sigmoid`` loss is -log σ(βh) whatever ``label_smoothing`` says (it is only read by the
    ``robust``, ``exo_pair`` and ``aot*`` losses), so conservative DPO cannot be compared through it."""
    model, ref, tok = tiny
    theirs = _trl_loss(model, ref, tok, pairs, tmp_path, loss_type="sigmoid", beta=0.5, label_smoothing=0.2)
    assert theirs == pytest.approx(_our_loss(model, ref, tok, pairs, "dpo", "sum", 0.5, 0.0), abs=1e-5)
    assert theirs != pytest.approx(_our_loss(model, ref, tok, pairs, "dpo", "sum", 0.5, 0.2), abs=1e-4)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_conservative_dpo_matches_trl_aot_on_single_pairs(tiny, pairs, tmp_path, index):
    """TRL's ``aot`` loss is −(1−ε)·log σ(βδ) − ε·log σ(−βδ) over *batch-sorted* log-ratios; with one pair
    per batch the sort is the identity and δ = h, so it is exactly conservative DPO (cDPO) with ε."""
    model, ref, tok = tiny
    one = [pairs[index]]
    ours = _our_loss(model, ref, tok, one, "dpo", "sum", 0.5, label_smoothing=0.2)
    theirs = _trl_loss(model, ref, tok, one, tmp_path, loss_type="aot", beta=0.5, label_smoothing=0.2)
    assert ours == pytest.approx(theirs, abs=1e-5, rel=1e-6)
