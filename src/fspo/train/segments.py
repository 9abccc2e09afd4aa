"""Attention over the segments of a shared-prefix or tree row, without a dense mask.

A shared-prefix row (``prompt + chosen + rejected``) or a shared-shot tree row (trunk, then per
query its prompt rest, chosen and rejected) is a few contiguous *segments*, each of whose tokens
see some earlier segments in full and their own segment causally: the prompt and chosen answer
are one causal run; the rejected answer sees the prompt, then itself. With the dense
``[rows, 1, L, L]`` mask, SDPA computes every one of the L² scores and throws the masked ones
away; on a CPU its kernel does not skip masked blocks (docs/benchmarks.md, "Attention masks").
Here each segment is one SDPA call over the keys it may see: a plain causal call (the kernel skips
the upper triangle) where it sees nothing before it, else its visible keys concatenated with a
small ``[segment, visible]`` mask. For an 8-shot tree of 4 queries that is about half the score
computations of the dense mask. The values are the dense path's within float rounding
(tests/test_segments.py); the mask is still built, and any other attention falls back to it.

Transformers picks the attention function by name from a registry; :func:`install` wraps its
``sdpa`` entry once: the wrapper runs the segments when the mask it receives carries a
:class:`SegmentPlan` (``mask.fspo_segments``, set by :func:`fspo.train.packing.shared_prefix_logps`)
and calls transformers' own SDPA attention otherwise, so every other model call is unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

PLAN_ATTRIBUTE = "fspo_segments"


@dataclass(frozen=True)
class Segment:
    """Columns ``[start, end)`` of a row; their queries see the columns of ``sees`` in full, then
    their own segment causally."""

    start: int
    end: int
    sees: tuple[tuple[int, int], ...] = ()


@dataclass
class SegmentPlan:
    """Per row of a batch, its segments in column order (they tile the row's real tokens; the
    padding after them is attended by nobody)."""

    rows: list[tuple[Segment, ...]]
    _masks: dict = field(default_factory=dict, repr=False)

    def mask(self, queries: int, seen: int, device) -> torch.Tensor:
        """[queries, seen + queries] bool: everything seen, then causal over the segment itself."""
        key = (queries, seen, str(device))
        if key not in self._masks:
            m = torch.ones(queries, seen + queries, dtype=torch.bool, device=device)
            m[:, seen:] = torch.ones(queries, queries, dtype=torch.bool, device=device).tril()
            self._masks[key] = m
        return self._masks[key]


def segment_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: SegmentPlan, scale: float | None
) -> torch.Tensor:
    """Attention of ``query`` [rows, heads, L, dim] over ``key``/``value`` [rows, kv heads, L, dim]
    restricted by ``plan``; returns [rows, heads, L, dim] (zeros on the padding).

    Each row is split once at every segment boundary (``split``/``unbind``, whose backward is one
    concatenation: slicing each piece out of the full tensors made the backward fill a full-size
    zero gradient per slice, a fifth of the attention's time)."""
    if len(plan.rows) != query.shape[0]:
        raise ValueError(f"segment plan has {len(plan.rows)} rows, the batch {query.shape[0]}")
    gqa = query.shape[1] != key.shape[1]
    width = query.shape[2]
    out_rows = []
    for segments, q_row, k_row, v_row in zip(plan.rows, query.unbind(0), key.unbind(0), value.unbind(0)):
        bounds = sorted({0, width} | {b for s in segments for r in ((s.start, s.end), *s.sees) for b in r})
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        at = {b: i for i, b in enumerate(bounds)}
        pieces = [t.split(sizes, dim=1) for t in (q_row, k_row, v_row)]

        def span(which: int, lo: int, hi: int, pieces=pieces, at=at) -> torch.Tensor:
            parts = pieces[which][at[lo] : at[hi]]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

        parts = []
        for s in segments:
            q = span(0, s.start, s.end)[None]
            ranges = [*s.sees, (s.start, s.end)]
            k = (
                torch.cat([span(1, lo, hi) for lo, hi in ranges], dim=1)[None]
                if s.sees
                else span(1, s.start, s.end)[None]
            )
            v = (
                torch.cat([span(2, lo, hi) for lo, hi in ranges], dim=1)[None]
                if s.sees
                else span(2, s.start, s.end)[None]
            )
            if s.sees:
                mask = plan.mask(s.end - s.start, k.shape[-2] - (s.end - s.start), query.device)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
            parts.append(out[0])
        end = segments[-1].end if segments else 0
        if end < width:
            parts.append(q_row.new_zeros(q_row.shape[0], width - end, q_row.shape[2]))
        out_rows.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    return torch.stack(out_rows)


def attach(mask: torch.Tensor, plan: SegmentPlan | None) -> torch.Tensor:
    """``mask`` carrying ``plan`` to the attention function (read back by the ``sdpa`` wrapper)."""
    if plan is not None:
        install()
        setattr(mask, PLAN_ATTRIBUTE, plan)
    return mask


@functools.cache
def install() -> None:
    """Wrap transformers' ``sdpa`` attention once (idempotent); see the module docstring."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def sdpa_with_segments(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        plan = getattr(attention_mask, PLAN_ATTRIBUTE, None)
        if plan is None or dropout or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
            return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        out = segment_attention(query, key, value, plan, scaling)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("sdpa", sdpa_with_segments)


def pair_segments(start: int, prompt: int, chosen: int, rejected: int) -> tuple[Segment, Segment]:
    """A shared-prefix pair at column ``start``: prompt + chosen causally, then the rejected answer
    seeing the prompt."""
    split = start + prompt + chosen
    return Segment(start, split), Segment(split, split + rejected, ((start, start + prompt),))


def tree_segments(trunk: int, branches: Sequence[tuple[int, int, int]]) -> tuple[Segment, ...]:
    """A tree row: the trunk causally, then per branch (prompt rest, chosen, rejected lengths) the
    rest + chosen seeing the trunk, and the rejected answer seeing the trunk and the rest."""
    out = [Segment(0, trunk)] if trunk else []
    at = trunk
    for rest, chosen, rejected in branches:
        trunk_range = ((0, trunk),) if trunk else ()
        split = at + rest + chosen
        out.append(Segment(at, split, trunk_range))
        out.append(Segment(split, split + rejected, trunk_range + (((at, at + rest),) if rest else ())))
        at = split + rejected
    return tuple(s for s in out if s.end > s.start)
