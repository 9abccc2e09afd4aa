"""Collate tokenized pairs into model inputs, and score completions.

Rows are left-padded so that every completion ends at the last position: the model then
computes logits only for the last K+1 positions (``logits_to_keep``), skipping the vocabulary
projection over the long few-shot prompt. Explicit position ids keep left padding exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fspo.data.truncation import TokenizedPair
from fspo.train import packing
from fspo.train.losses import reduce_logps, token_logps


@dataclass
class CompletionBatch:
    """``rows`` sequences (prompt + completion), left-padded; the last ``keep`` tokens hold every completion."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor  # [rows, keep]: completion token ids, -100 elsewhere
    keep: int

    def to(self, device) -> CompletionBatch:
        return CompletionBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.labels.to(device),
            self.keep,
        )

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate_completions(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> CompletionBatch:
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    keep = max(len(c) for c in completions)
    rows = len(seqs)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    labels = torch.full((rows, keep), -100, dtype=torch.long)
    for i, (seq, comp) in enumerate(zip(seqs, completions)):
        input_ids[i, width - len(seq) :] = torch.tensor(seq)
        attention_mask[i, width - len(seq) :] = 1
        labels[i, keep - len(comp) :] = torch.tensor(list(comp))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return CompletionBatch(input_ids, attention_mask, position_ids, labels, keep)


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int) -> CompletionBatch:
    """Chosen rows first, then rejected rows: one forward for both sides (2B rows)."""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return collate_completions(prompts, completions, pad_id)


def completion_logps(model, batch: CompletionBatch, reduction: str = "mean") -> torch.Tensor:
    """Reduced log-prob of each row's completion under ``model`` (gradients flow if enabled)."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.keep + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1]  # position t predicts token t+1
    sums, counts = token_logps(logits, batch.labels)
    return reduce_logps(sums, counts, reduction)


def split_pair_logps(logps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def pair_logps(
    model,
    pairs: Sequence[TokenizedPair],
    pad_id: int,
    reduction: str,
    device,
    shared_prefix: bool = False,
    queries_per_tree: int = 1,
    segments: bool | None = None,
):
    """(chosen, rejected) reduced log-probs of a batch of pairs.

    ``shared_prefix`` runs each pair as one sequence (prompt once, both completions masked from
    each other, see ``fspo.train.packing``); otherwise chosen and rejected rows are separate.
    ``queries_per_tree`` > 1 (with ``shared_prefix``) puts up to that many pairs whose prompts
    share their start (the same user's shots) into one tree row (:func:`packing.collate_trees`).
    Only the tokens where the two completions differ are scored (:meth:`TokenizedPair.preference_view`).
    ``segments``: see :func:`packing.shared_prefix_logps`.
    """
    pairs = [p.preference_view() for p in pairs]
    if shared_prefix and packing.supports_shared_prefix(model):
        if queries_per_tree > 1:
            return packing.tree_pair_logps(model, pairs, pad_id, reduction, device, queries_per_tree, segments)
        return packing.packed_pair_logps(model, pairs, pad_id, reduction, device, segments=segments)
    batch = collate_pairs(pairs, pad_id).to(device)
    return split_pair_logps(completion_logps(model, batch, reduction))


def pair_tokens(pairs: Sequence[TokenizedPair], shared_prefix: bool = False, queries_per_tree: int = 1) -> int:
    """Tokens a forward pass over these pairs processes (for tokens/s)."""
    pairs = [p.preference_view() for p in pairs]
    if shared_prefix and queries_per_tree > 1:
        return packing.tree_tokens(pairs, packing.tree_groups(pairs, queries_per_tree))
    if shared_prefix:
        return sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
