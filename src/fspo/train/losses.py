"""Preference losses as small pure functions (the math stays visible and testable).

Notation (docs/training.md): s(y) is the log-probability of a completion under a model,
h = [s_θ(y_w) − s_θ(y_l)] − [s_ref(y_w) − s_ref(y_l)].

The reduction of token log-probs into s(y) is explicit:
- ``sum``: the reference code's choice for SFT, DPO and IPO (summed sequence log-probs);
  with IPO β = 0.01 this targets a 50-nat margin and is length-sensitive.
- ``mean``: TRL's choice for IPO (per-token average); β = 0.1 then targets a margin of 5
  in average nats per token, and longer answers are not favoured or penalized by length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("sum", "mean")
PREFERENCE_LOSSES = ("dpo", "ipo")


def token_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of label-token log-probs and the count of label tokens.

    ``logits[b, t]`` must already be aligned to predict ``labels[b, t]`` (shift done by the caller).
    Log-softmax runs in fp32 even for bf16 models.
    """
    mask = labels != ignore_index
    safe = labels.masked_fill(~mask, 0)
    logps = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1), mask.sum(-1)


def reduce_logps(sums: torch.Tensor, counts: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return sums
    if reduction == "mean":
        return sums / counts.clamp(min=1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def sft_loss(policy_logps: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the chosen completion (per sequence, averaged over the batch)."""
    return -policy_logps.mean()


def with_nll_terms(preference_losses: torch.Tensor, terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """Mean preference loss + Σ w · NLL(s) over ``(w, s)`` with w > 0 (RPO-style regularization).

    ``s`` holds one reduced log-prob per pair of the chosen completion: the differing tokens for
    ``loss.sft_weight``, the whole completion (header and RAT description included) for
    ``loss.description_weight``. A zero weight adds nothing (not even 0 · NaN)."""
    loss = preference_losses.mean()
    for weight, logps in terms:
        if weight > 0:
            loss = loss + weight * sft_loss(logps)
    return loss


def log_ratio_margin(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
) -> torch.Tensor:
    """h = [s_θ(y_w) − s_θ(y_l)] − [s_ref(y_w) − s_ref(y_l)]."""
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def dpo_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair −(1−ε)·log σ(βh) − ε·log σ(−βh) (conservative DPO when ε > 0)."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair (h − 1/(2β))²."""
    return (h - 1 / (2 * beta)) ** 2


def preference_loss(name: str, h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    if name == "dpo":
        return dpo_loss(h, beta, label_smoothing)
    if name == "ipo":
        return ipo_loss(h, beta)
    raise ValueError(f"preference loss must be one of {PREFERENCE_LOSSES}, got {name!r}")
