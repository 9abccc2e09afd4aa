"""The pairwise labelers: a user-conditioned LLM judge run in both orders, and the attribute judge.

LLM judge: the shared core :mod:`fspo.llm.pairwise` (prompt, strict verdict parser, both-order
combination; documented in docs/synth.md). Labels allow no tie: anything but ``Verdict: A`` or
``Verdict: B`` is an invalid verdict (counted, never guessed), and a pair whose winner changes with
the order is position-biased noise and is dropped. Where the backend can score choices, the
verdict is the log-prob comparison of " A" vs " B" after "Verdict:" (never unparseable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from fspo.data.attributes import AXES, Measurement, measure
from fspo.llm.base import GenerationParams
from fspo.llm.pairwise import CHOICES, VERDICT_PREFIX, both_orders, combine_orders, parse_verdict


@dataclass(frozen=True)
class Outcome:
    """A labeled pair: ``label`` +1 (first response wins), -1 (second wins), 0 (undecided)."""

    label: int
    consistent: bool
    valid: bool
    p_first: float  # probability the first response is preferred (0.5 = no information)

    @property
    def entropy(self) -> float:
        return binary_entropy(self.p_first)


def binary_entropy(p: float) -> float:
    """Shannon entropy in nats of a binary label with probability ``p``."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _combine(v1: str | None, v2: str | None, p1: float, p2: float) -> Outcome:
    """An Outcome from the verdicts of the (first, second) and (second, first) orders."""
    label, kind = combine_orders(v1, v2)
    return Outcome(label, kind == "agree", kind in ("agree", "flip"), (p1 + p2) / 2)


def judge_pairs(
    llm, items: list[tuple[str, str, str, str]], mode: str = "auto", desc: str | None = None
) -> list[Outcome]:
    """Judge ``(description, question, first, second)`` items in both orders; see the module doc."""
    if not items:
        return []
    prompts = both_orders(items)
    use_logprob = mode == "logprob" or (mode == "auto" and getattr(llm, "can_score_choices", False))
    out = []
    if use_logprob:
        scores = llm.choice_logprobs(prompts, CHOICES, prefix=VERDICT_PREFIX, desc=desc)
        for i in range(0, len(scores), 2):
            (a1, b1), (a2, b2) = scores[i], scores[i + 1]
            p1 = 1 / (1 + math.exp(b1 - a1))  # first shown as A
            p2 = 1 / (1 + math.exp(a2 - b2))  # first shown as B
            out.append(_combine("A" if a1 > b1 else "B", "B" if b2 > a2 else "A", p1, p2))
        return out
    params = GenerationParams(max_new_tokens=48, temperature=0.0, seed=0)
    texts = llm.generate(prompts, params, desc=desc)
    for i in range(0, len(texts), 2):
        v1, v2 = parse_verdict(texts[i], allow_tie=False), parse_verdict(texts[i + 1], allow_tie=False)
        p1 = 0.5 if v1 is None else float(v1 == "A")  # first shown as A
        p2 = 0.5 if v2 is None else float(v2 == "B")  # first shown as B
        out.append(_combine(v1, v2, p1, p2))
    return out


@lru_cache(maxsize=65536)
def _measured(text: str) -> Measurement:
    return measure(text)


def attribute_outcome(attributes: dict[str, str], first: str, second: str) -> Outcome:
    """The attribute judge as a labeler: exact, order-free; ties are undecided.

    Same rule as ``fspo.data.attributes.attribute_preference`` (one point per measurable axis on which a
    response expresses the user's value), with measurements memoized: every user labels every shared pair.
    """
    measurable = {a: v for a, v in attributes.items() if a in AXES}
    if not measurable:
        raise ValueError(f"none of the user's attributes {sorted(attributes)} is measurable ({', '.join(AXES)})")
    ma, mb = _measured(first), _measured(second)
    sa = sum(ma.value(a) == v for a, v in measurable.items())
    sb = sum(mb.value(a) == v for a, v in measurable.items())
    pref = (sa > sb) - (sa < sb)
    return Outcome(pref, pref != 0, True, {1: 1.0, -1: 0.0, 0: 0.5}[pref])
