"""Pairwise judges for personalized answers: which of two answers would *this* user prefer?

- :class:`AttributeJudge`: deterministic and free. The user's hidden, measurable attributes
  (sentiment, length, reading level; see :mod:`fspo.data.attributes`) decide. Symmetric by
  construction, so it never flips with the order.
- :class:`LLMJudge`: any text backend, conditioned on the user's free-text description. Each pair
  is judged in both orders; a verdict counts only when both orders agree, otherwise the pair is
  a tie, and contradictions (A in one order, B in the other) are counted as flips. The prompt, the
  parse rule and the both-order combination are the core synth's labeler uses too
  (:mod:`fspo.llm.pairwise`; docs/evaluation.md), with ties allowed.

Both return one :class:`Verdict` per :class:`Comparison`, from the point of view of answer ``a``.

Both apply the same **acceptability gate** first (:mod:`fspo.eval.acceptability`): an empty,
echoing, template-leaking, degenerate or off-topic answer loses to an acceptable one, and two
unacceptable answers tie, whatever their attributes or the LLM say; only pairs of acceptable
answers are decided by the judge's own rule. The flags of both answers go into ``Verdict.detail``.
The LLM judge still judges every pair (its flip rate and consistency counts describe the LLM on all
pairs), and its own verdict stays in ``detail["judge_preference"]`` when the gate overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fspo.data.attributes import AXES, attribute_preference, match_count
from fspo.errors import FspoError
from fspo.eval.acceptability import Acceptability, assess, gate
from fspo.llm.base import GenerationParams
from fspo.llm.pairwise import both_orders, combine_orders, flatten, parse_verdict


@dataclass(frozen=True)
class Comparison:
    """Answer ``a`` (the method's) against answer ``b`` (the baseline's) for one user and question.

    ``flags_a``/``flags_b``: the answers' acceptability, computed by the caller with what it has
    (shots, base-model NLL, calibrated thresholds); when None the judge computes it from the text
    alone, with ``shots`` (the shots' answers shown in the prompt) for the verbatim-copy check."""

    user_id: str
    question: str
    a: str
    b: str
    description: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    flags_a: Acceptability | None = None
    flags_b: Acceptability | None = None
    shots: tuple[str, ...] = ()

    def acceptability(self) -> tuple[Acceptability, Acceptability]:
        fa = self.flags_a or assess(self.question, self.a, self.shots)
        fb = self.flags_b or assess(self.question, self.b, self.shots)
        return fa, fb


@dataclass(frozen=True)
class Verdict:
    """``preference``: +1 the user prefers ``a``, -1 ``b``, 0 tie. ``flipped``: order-inconsistent."""

    preference: int
    flipped: bool = False
    detail: dict = field(default_factory=dict)


def gated(it: Comparison, judge_preference: int, detail: dict) -> Verdict:
    """The verdict after the acceptability gate: both answers' flags go into ``detail``."""
    fa, fb = it.acceptability()
    g = gate(fa, fb)
    detail = detail | {
        "acceptable_a": fa.acceptable,
        "acceptable_b": fb.acceptable,
        "flags_a": fa.to_dict(),
        "flags_b": fb.to_dict(),
        "gated": g is not None,
        "judge_preference": judge_preference,
    }
    return Verdict(judge_preference if g is None else g, detail=detail)


class Judge(Protocol):
    name: str

    def judge(self, items: Sequence[Comparison]) -> list[Verdict]: ...


class AttributeJudge:
    """Acceptability first (:func:`gated`), then the user's measurable attributes: one point per axis
    the answer expresses, more points win. ``detail["judge_preference"]`` is the attributes-only
    verdict (the judge before issue 13)."""

    name = "attribute"

    def judge(self, items: Sequence[Comparison]) -> list[Verdict]:
        out = []
        for it in items:
            if not any(axis in AXES for axis in it.attributes):
                raise FspoError(
                    f"user {it.user_id!r} has no measurable attributes ({', '.join(AXES)}); "
                    "use --judge llm for this domain"
                )
            detail = {"match_a": match_count(it.attributes, it.a), "match_b": match_count(it.attributes, it.b)}
            out.append(gated(it, attribute_preference(it.attributes, it.a, it.b), detail))
        return out


# --- LLM judge ---------------------------------------------------------------------------------


class LLMJudge:
    """User-conditioned pairwise judge on any backend (local model, OpenAI-compatible server, scripted).

    ``backend`` may be a :class:`fspo.llm.cache.CachedBackend` so a rerun replays judge calls.
    Prompts are chat messages (``chat=False``: one flattened text); greedy decoding.
    """

    def __init__(self, backend, max_new_tokens: int = 96, chat: bool = True) -> None:
        self.backend = backend
        self.name = f"llm:{backend.name}"
        self.params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
        self.chat = chat

    def judge(self, items: Sequence[Comparison]) -> list[Verdict]:
        for it in items:
            if not it.description.strip():
                raise FspoError(f"user {it.user_id!r} has no description; the LLM judge needs one (users.jsonl)")
        prompts = both_orders([(it.description, it.question, it.a, it.b) for it in items], allow_tie=True)
        texts = self.backend.generate(prompts if self.chat else [flatten(p) for p in prompts], self.params)
        out = []
        for i in range(len(items)):
            v1, v2 = parse_verdict(texts[2 * i]), parse_verdict(texts[2 * i + 1])
            pref, kind = combine_orders(v1, v2)
            v = gated(items[i], pref, {"ab": v1, "ba": v2, "kind": kind, "raw": texts[2 * i]})
            out.append(Verdict(v.preference, flipped=kind == "flip", detail=v.detail))
        return out


def verdict_kinds(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """How many verdicts were order-consistent, flipped, partial or unparseable (LLM judge only)."""
    kinds: dict[str, int] = {}
    for v in verdicts:
        k = v.detail.get("kind")
        if k:
            kinds[k] = kinds.get(k, 0) + 1
    return kinds
