"""Pairwise judges for personalized answers: which of two answers would *this* user prefer?

- :class:`AttributeJudge`: deterministic and free. The user's hidden, measurable attributes
  (sentiment, length, reading level; see :mod:`fspo.data.attributes`) decide. Symmetric by
  construction, so it never flips with the order.
- :class:`LLMJudge`: any text backend, conditioned on the user's free-text description. Each pair
  is judged in both orders; a verdict counts only when both orders agree, otherwise the pair is
  a tie, and contradictions (A in one order, B in the other) are counted as flips. The prompt and
  the parse rule are below and in docs/evaluation.md.

Both return one :class:`Verdict` per :class:`Comparison`, from the point of view of answer ``a``.

Both apply the same **acceptability gate** first (:mod:`fspo.eval.acceptability`): an empty,
echoing, template-leaking, degenerate or off-topic answer loses to an acceptable one, and two
unacceptable answers tie, whatever their attributes or the LLM say; only pairs of acceptable
answers are decided by the judge's own rule. The flags of both answers go into ``Verdict.detail``.
The LLM judge still judges every pair (its flip rate and consistency counts describe the LLM on all
pairs), and its own verdict stays in ``detail["judge_preference"]`` when the gate overrides it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fspo.errors import FspoError
from fspo.eval.acceptability import Acceptability, assess, gate
from fspo.data.attributes import AXES, attribute_preference, match_count
from fspo.llm.base import GenerationParams

JUDGES = ("attribute", "llm")


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

JUDGE_TEMPLATE = """You are judging two answers on behalf of one specific user.

User description: {description}

Question: {question}

Response A: {a}

Response B: {b}

Which response would this user prefer? Judge by the user's stated preferences, not by your own taste. If neither fits this user better, answer TIE. Think briefly if you need to, then end with one final line that is exactly "Verdict: A", "Verdict: B" or "Verdict: TIE"."""

_VERDICT = re.compile(r"^\W*verdict\W*:\W*(a|b|tie)\W*$", re.IGNORECASE)


def judge_prompt(description: str, question: str, a: str, b: str) -> str:
    return JUDGE_TEMPLATE.format(
        description=description.strip() or "(no description)",
        question=question.strip(),
        a=a.strip() or "(empty)",
        b=b.strip() or "(empty)",
    )


def parse_verdict(text: str) -> str | None:
    """The verdict on the last non-empty line: ``"A"``, ``"B"``, ``"TIE"``, or None (unparseable).

    Strict on purpose: a verdict anywhere else (e.g. "A is better" in the reasoning) is not read,
    so a rambling judge shows up as unparseable instead of as a silent guess. Case, surrounding
    markdown emphasis and a trailing period are tolerated.
    """
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = _VERDICT.match(lines[-1])
    return m.group(1).upper() if m else None


def combine_orders(first: str | None, second: str | None) -> tuple[int, str]:
    """Combine the verdicts of (a, b) shown as (A, B) and then as (B, A) into a preference for ``a``.

    Returns (preference, kind) with kind one of ``agree`` (both orders name the same answer, or
    both say TIE), ``flip`` (they name different answers: a tie), ``partial`` (one order decides,
    the other says TIE or is unparseable: a tie) and ``unparsed`` (neither order parsed: a tie).
    """
    p1 = {"A": 1, "B": -1, "TIE": 0}.get(first) if first else None
    p2 = {"A": -1, "B": 1, "TIE": 0}.get(second) if second else None
    if p1 is None and p2 is None:
        return 0, "unparsed"
    if p1 is not None and p1 == p2:
        return p1, "agree"
    if p1 is not None and p2 is not None and p1 == -p2 and p1 != 0:
        return 0, "flip"
    return 0, "partial"


class LLMJudge:
    """User-conditioned pairwise judge on any backend (local model, OpenAI-compatible server, scripted).

    ``backend`` may be a :class:`fspo.llm.cache.CachedBackend` so a rerun replays judge calls.
    Prompts are chat messages (one user turn); greedy decoding.
    """

    def __init__(self, backend, max_new_tokens: int = 96, chat: bool = True) -> None:
        self.backend = backend
        self.name = f"llm:{backend.name}"
        self.params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
        self.chat = chat

    def _prompt(self, description: str, question: str, a: str, b: str):
        text = judge_prompt(description, question, a, b)
        return [{"role": "user", "content": text}] if self.chat else text

    def judge(self, items: Sequence[Comparison]) -> list[Verdict]:
        for it in items:
            if not it.description.strip():
                raise FspoError(f"user {it.user_id!r} has no description; the LLM judge needs one (users.jsonl)")
        prompts = [self._prompt(it.description, it.question, it.a, it.b) for it in items]
        prompts += [self._prompt(it.description, it.question, it.b, it.a) for it in items]
        texts = self.backend.generate(prompts, self.params)
        n = len(items)
        out = []
        for i in range(n):
            v1, v2 = parse_verdict(texts[i]), parse_verdict(texts[n + i])
            pref, kind = combine_orders(v1, v2)
            v = gated(items[i], pref, {"ab": v1, "ba": v2, "kind": kind, "raw": texts[i]})
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
