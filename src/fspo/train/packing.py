"""Shared-prefix preference batches: the prompt runs once per pair, not once per completion.

A pair becomes one sequence ``prompt + chosen + rejected``. A custom 4D attention mask lets the
chosen tokens see the prompt (causally) and the rejected tokens see the prompt and themselves,
never the chosen tokens; position ids restart at ``len(prompt)`` for the rejected completion,
so every token has exactly the position and the context it has in a separate sequence. The
log-probs are therefore the same as the naive two-sequence path (up to float rounding).

Two layouts:

- ``rows`` (the default): one pair per row, right-padded to the longest pair.
- ``packed``: all pairs of the batch in a single row with a block-diagonal mask (padding-free).
  With a dense 4D mask the attention cost grows with the square of the packed length, so on
  CPUs (SDPA math/flash kernels with a mask) this was slower than ``rows`` in
  ``bench/train_throughput.py``; it is kept for very uneven lengths and for measurement.

Only positions that predict a completion token go through the LM head (``logits_to_keep`` as a
boolean mask): the last prompt token (it predicts the first token of both completions) and the
completion tokens but the last of each. A model whose attention implementation cannot take a
custom 4D mask (FlashAttention kernels) falls back to the separate-rows path.

**Shared-shot trees** (:func:`collate_trees`): several pairs whose prompts share a long common
start (several queries of one user with the same shots) go into one row: the common start (the
*trunk*) once, then per pair its own rest of the prompt, chosen and rejected answer as a branch.
Each branch's tokens see the trunk and their own branch only (rejected never sees chosen); the
positions of every branch continue after the trunk. A one-pair tree is exactly the ``rows``
shared-prefix sequence. The trunk is the pairs' longest common prompt prefix in token ids, so every
token keeps its separate-episode context and position whatever the pairs are (exactness does not
depend on how they were grouped; the saving does).

The mask goes to SDPA and eager attention as an additive float mask. On an SDPA model the batch's
rows also carry their segments (:mod:`fspo.train.segments`): attention then runs one SDPA call per
segment over the keys it may see instead of all L² scores of the dense mask (the same values within
float rounding). ``bench/attention_masks.py`` measured the dense mask against SDPA with a boolean
mask (no faster), ``flex_attention`` block masks (no CPU backward in torch 2.13, and its compiled
forward was not faster either) and the segments for an 8-shot tree row (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fspo.data.truncation import TokenizedPair
from fspo.train.losses import reduce_logps
from fspo.train.segments import Segment, SegmentPlan, attach, pair_segments, tree_segments

LAYOUTS = ("rows", "packed")
DEFAULT_LAYOUT = "rows"
MASKABLE_ATTENTION = ("sdpa", "eager")

PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, -1


@dataclass
class SharedPrefixBatch:
    """Model inputs for a batch of pairs, and where each completion token's log-prob comes from."""

    input_ids: torch.Tensor  # [rows, width]
    position_ids: torch.Tensor  # [rows, width]
    allowed: torch.Tensor  # [rows, 1, width, width] bool: query may attend to key
    keep: torch.Tensor  # [rows, width] bool: positions whose hidden state goes through the LM head
    src: torch.Tensor  # [n_targets]: index into the kept (flattened) positions
    target: torch.Tensor  # [n_targets]: token id predicted there
    segment: torch.Tensor  # [n_targets]: pair index (chosen) or n_pairs + pair index (rejected)
    counts: torch.Tensor  # [2 * n_pairs]: completion lengths, chosen then rejected
    n_pairs: int
    prompt_tokens: int
    plan: SegmentPlan | None = None  # the rows' segments (fspo.train.segments), for SDPA without the dense mask

    def to(self, device) -> SharedPrefixBatch:
        return SharedPrefixBatch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.allowed.to(device),
            self.keep.to(device),
            self.src.to(device),
            self.target.to(device),
            self.segment.to(device),
            self.counts.to(device),
            self.n_pairs,
            self.prompt_tokens,
            self.plan,
        )

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the batch: prompt + chosen + rejected per pair."""
        return self.prompt_tokens + int(self.counts.sum())


def _pair_layout(pair: TokenizedPair) -> tuple[list[int], list[int], list[int]]:
    """Token ids, position ids and branch tags of one pair's shared-prefix sequence."""
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    if p == 0:
        raise ValueError("shared-prefix batches need a non-empty prompt (it predicts the first completion token)")
    ids = list(pair.prompt_ids) + list(pair.chosen_ids) + list(pair.rejected_ids)
    pos = list(range(p + c)) + list(range(p, p + r))
    branch = [PROMPT] * p + [CHOSEN] * c + [REJECTED] * r
    return ids, pos, branch


def collate_shared_prefix(
    pairs: Sequence[TokenizedPair], pad_id: int, layout: str = DEFAULT_LAYOUT
) -> SharedPrefixBatch:
    """Build the shared-prefix batch (``rows``: a pair per row; ``packed``: all pairs in one row)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    n = len(pairs)
    groups = [[i] for i in range(n)] if layout == "rows" else [list(range(n))]
    lengths = [
        sum(len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids) for i in g) for g in groups
    ]
    width = max(lengths)
    rows = len(groups)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    doc = torch.full((rows, width), -1, dtype=torch.long)
    branch = torch.full((rows, width), PAD, dtype=torch.long)
    keep = torch.zeros((rows, width), dtype=torch.bool)
    # (row, column) of each target's predictor, the target id and its segment
    pred_rc: list[tuple[int, int]] = []
    targets: list[int] = []
    segments: list[int] = []
    plan_rows: list[tuple[Segment, ...]] = []
    for row, group in enumerate(groups):
        start = 0
        row_segments: list[Segment] = []
        for i in group:
            pair = pairs[i]
            ids, pos, br = _pair_layout(pair)
            row_segments += pair_segments(start, len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids))
            end = start + len(ids)
            input_ids[row, start:end] = torch.tensor(ids)
            position_ids[row, start:end] = torch.tensor(pos)
            doc[row, start:end] = i
            branch[row, start:end] = torch.tensor(br)
            p, c = len(pair.prompt_ids), len(pair.chosen_ids)
            last_prompt = start + p - 1
            for j, tok in enumerate(pair.chosen_ids):
                pred_rc.append((row, last_prompt + j))
                targets.append(tok)
                segments.append(i)
            for j, tok in enumerate(pair.rejected_ids):
                pred_rc.append((row, last_prompt if j == 0 else start + p + c + j - 1))
                targets.append(tok)
                segments.append(n + i)
            start = end
        plan_rows.append(tuple(row_segments))
        if start < width:  # padding keeps positions increasing (harmless, never attended)
            position_ids[row, start:] = torch.arange(width - start)
    for row, col in pred_rc:
        keep[row, col] = True
    flat_index = torch.cumsum(keep.flatten(), 0) - 1  # kept position -> row of the LM-head output
    src = torch.tensor([int(flat_index[row * width + col]) for row, col in pred_rc], dtype=torch.long)
    q = torch.arange(width)
    causal = q[None, :] <= q[:, None]  # [query, key]
    same_doc = (doc[:, :, None] == doc[:, None, :]) & (doc[:, :, None] >= 0)
    cross = (branch[:, :, None] == REJECTED) & (branch[:, None, :] == CHOSEN)
    allowed = (same_doc & causal[None] & ~cross) | torch.eye(width, dtype=torch.bool)[None]
    counts = torch.tensor([len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs], dtype=torch.long)
    return SharedPrefixBatch(
        input_ids,
        position_ids,
        allowed.unsqueeze(1),
        keep,
        src,
        torch.tensor(targets, dtype=torch.long),
        torch.tensor(segments, dtype=torch.long),
        counts,
        n,
        sum(len(p.prompt_ids) for p in pairs),
        SegmentPlan(plan_rows),
    )


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def tree_groups(pairs: Sequence[TokenizedPair], max_queries: int, min_shared: float = 0.5) -> list[list[int]]:
    """Indices of ``pairs`` grouped into trees of at most ``max_queries`` pairs.

    Pairs are taken in the order of their prompt ids (so pairs with a common start are neighbours
    wherever they are in the batch); a pair joins the current tree when the tree's trunk and its
    prompt share at least ``min_shared`` of its prompt's tokens, else it starts a new tree.
    Grouping decides only how much is saved: :func:`collate_trees` is exact for any grouping."""
    if max_queries < 1:
        raise ValueError("max_queries must be >= 1")
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].prompt_ids)
    groups: list[list[int]] = []
    trunk: Sequence[int] = ()
    for i in order:
        prompt = pairs[i].prompt_ids
        if groups and len(groups[-1]) < max_queries:
            shared = common_prefix(trunk, prompt)
            if shared >= 1 and shared >= min_shared * len(prompt):
                groups[-1].append(i)
                trunk = trunk[:shared]
                continue
        groups.append([i])
        trunk = prompt
    return groups


def trunk_length(pairs: Sequence[TokenizedPair]) -> int:
    """Tokens of the group's common prompt start (the trunk), at most the shortest prompt."""
    n = len(pairs[0].prompt_ids)
    for p in pairs[1:]:
        n = min(n, common_prefix(pairs[0].prompt_ids, p.prompt_ids))
    return n


def tree_tokens(pairs: Sequence[TokenizedPair], groups: Sequence[Sequence[int]]) -> int:
    """Real tokens of the tree rows: each trunk once, then every pair's prompt rest and answers."""
    total = 0
    for g in groups:
        members = [pairs[i] for i in g]
        t = trunk_length(members)
        total += t + sum(len(p.prompt_ids) - t + len(p.chosen_ids) + len(p.rejected_ids) for p in members)
    return total


def collate_trees(pairs: Sequence[TokenizedPair], groups: Sequence[Sequence[int]], pad_id: int) -> SharedPrefixBatch:
    """One row per group: the group's trunk, then each pair's prompt rest, chosen and rejected
    (see the module docstring). ``groups`` must cover every pair once; the log-probs come back in
    the order of ``pairs``."""
    n = len(pairs)
    if sorted(i for g in groups for i in g) != list(range(n)):
        raise ValueError("groups must hold every pair exactly once")
    if any(len(p.prompt_ids) == 0 for p in pairs):
        raise ValueError("tree batches need a non-empty prompt (it predicts the first completion token)")
    rows_ids, rows_pos, rows_branch, rows_part, preds = [], [], [], [], []
    plan_rows: list[tuple[Segment, ...]] = []
    for row, g in enumerate(groups):
        members = [pairs[i] for i in g]
        t = trunk_length(members)
        plan_rows.append(
            tree_segments(t, [(len(p.prompt_ids) - t, len(p.chosen_ids), len(p.rejected_ids)) for p in members])
        )
        ids = list(members[0].prompt_ids[:t])
        pos = list(range(t))
        branch = [-1] * t  # -1: the trunk, b: branch b of this row
        part = [PROMPT] * t
        for b, (i, pair) in enumerate(zip(g, members)):
            rest = list(pair.prompt_ids[t:])
            p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
            start = len(ids)
            last_prompt = start + len(rest) - 1 if rest else t - 1
            ids += rest + list(pair.chosen_ids) + list(pair.rejected_ids)
            pos += list(range(t, p + c)) + list(range(p, p + r))
            branch += [b] * (len(rest) + c + r)
            part += [PROMPT] * len(rest) + [CHOSEN] * c + [REJECTED] * r
            chosen_at = start + len(rest)
            for j, tok in enumerate(pair.chosen_ids):
                preds.append((row, last_prompt if j == 0 else chosen_at + j - 1, tok, i))
            rejected_at = chosen_at + c
            for j, tok in enumerate(pair.rejected_ids):
                preds.append((row, last_prompt if j == 0 else rejected_at + j - 1, tok, n + i))
        rows_ids.append(ids)
        rows_pos.append(pos)
        rows_branch.append(branch)
        rows_part.append(part)
    width = max(len(x) for x in rows_ids)
    rows = len(groups)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    branch_t = torch.full((rows, width), -2, dtype=torch.long)  # -2: padding
    part_t = torch.full((rows, width), PAD, dtype=torch.long)
    for row in range(rows):
        k = len(rows_ids[row])
        input_ids[row, :k] = torch.tensor(rows_ids[row])
        position_ids[row, :k] = torch.tensor(rows_pos[row])
        position_ids[row, k:] = torch.arange(width - k)  # padding: never attended, never kept
        branch_t[row, :k] = torch.tensor(rows_branch[row])
        part_t[row, :k] = torch.tensor(rows_part[row])
    keep = torch.zeros((rows, width), dtype=torch.bool)
    for row, col, _, _ in preds:
        keep[row, col] = True
    flat_index = torch.cumsum(keep.flatten(), 0) - 1
    src = torch.tensor([int(flat_index[row * width + col]) for row, col, _, _ in preds], dtype=torch.long)
    q = torch.arange(width)
    causal = q[None, :] <= q[:, None]  # [query, key]
    bq, bk = branch_t[:, :, None], branch_t[:, None, :]
    real = (bq > -2) & (bk > -2)
    visible = (bk == -1) | ((bq == bk) & ~((part_t[:, :, None] == REJECTED) & (part_t[:, None, :] == CHOSEN)))
    allowed = (real & visible & causal[None]) | torch.eye(width, dtype=torch.bool)[None]
    counts = torch.tensor([len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs], dtype=torch.long)
    return SharedPrefixBatch(
        input_ids,
        position_ids,
        allowed.unsqueeze(1),
        keep,
        src,
        torch.tensor([x[2] for x in preds], dtype=torch.long),
        torch.tensor([x[3] for x in preds], dtype=torch.long),
        counts,
        n,
        sum(len(x) for x in rows_ids) - int(counts.sum()),  # each trunk once + every prompt's rest
        SegmentPlan(plan_rows),
    )


def tree_pair_logps(
    model,
    pairs: Sequence[TokenizedPair],
    pad_id: int,
    reduction: str,
    device,
    max_queries: int,
    segments: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) reduced log-probs, pairs with a common prompt start sharing one row
    (:func:`tree_groups`, at most ``max_queries`` per row). Needs :func:`supports_shared_prefix`."""
    batch = collate_trees(pairs, tree_groups(pairs, max_queries), pad_id).to(device)
    return shared_prefix_logps(model, batch, reduction, segments)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed, the dtype's minimum elsewhere (works for SDPA and eager attention)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def attention_implementation(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def supports_shared_prefix(model) -> bool:
    """True when the model's attention takes an arbitrary 4D mask (SDPA or eager)."""
    return attention_implementation(model) in MASKABLE_ATTENTION


def model_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


SEGMENT_ATTENTION = True
"""Default of :func:`shared_prefix_logps`'s ``segments`` (benchmarks switch it to time the dense mask)."""


def shared_prefix_logps(
    model, batch: SharedPrefixBatch, reduction: str = "mean", segments: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) reduced log-probs from one forward over the shared-prefix batch.
    ``segments`` (default :data:`SEGMENT_ATTENTION`): on an SDPA model, attention runs the rows'
    segments instead of the dense mask (:mod:`fspo.train.segments`)."""
    mask = additive_mask(batch.allowed, model_dtype(model))
    if (SEGMENT_ATTENTION if segments is None else segments) and attention_implementation(model) == "sdpa":
        attach(mask, batch.plan)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.keep,
        use_cache=False,
    )
    logits = out.logits  # [kept positions, vocab]
    if logits.dim() == 3:  # a model that ignored the boolean logits_to_keep: select the kept positions here
        logits = logits[batch.keep]
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)  # [kept]
    tok = logits[batch.src, batch.target] - lse[batch.src]  # [n_targets]
    sums = torch.zeros(2 * batch.n_pairs, dtype=tok.dtype, device=tok.device).index_add(0, batch.segment, tok)
    reduced = reduce_logps(sums, batch.counts.to(tok.device), reduction)
    return reduced[: batch.n_pairs], reduced[batch.n_pairs :]


def packed_pair_logps(
    model,
    pairs: Sequence[TokenizedPair],
    pad_id: int,
    reduction: str,
    device,
    layout: str = DEFAULT_LAYOUT,
    segments: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) reduced log-probs with the prompt computed once per pair. Needs an
    attention implementation that takes a 4D mask (:func:`supports_shared_prefix`);
    :func:`fspo.train.batching.pair_logps` falls back to separate rows otherwise."""
    batch = collate_shared_prefix(pairs, pad_id, layout).to(device)
    return shared_prefix_logps(model, batch, reduction, segments)
