"""The pairwise labelers: a user-conditioned LLM judge run in both orders, and the attribute judge.

LLM judge: the prompt (documented in docs/synth.md) shows the user's description, the question
and two responses, and asks for a final line ``Verdict: A`` or ``Verdict: B``. Anything else is an
invalid verdict (counted, never guessed). Each pair is judged in both orders; a pair whose winner
changes with the order is position-biased noise and is dropped. The judge is told to ignore
length unless the description itself is about length. Where the backend can score choices, the
verdict is the log-prob comparison of " A" vs " B" after "Verdict:" (never unparseable).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from fspo.data.attributes import AXES, Measurement, measure
from fspo.llm.base import GenerationParams, Message

LENGTH_WORDS = re.compile(r"\b(length|long|short|brief|concise|verbose|detailed|wordy|terse|succinct)\b", re.I)
_VERDICT = re.compile(r"^\W*verdict\W*:\W*([AB])\W*$", re.I)
CHOICES = (" A", " B")
VERDICT_PREFIX = "Verdict:"


def length_rule(description: str) -> str:
    if LENGTH_WORDS.search(description):
        return "The user's description mentions length, so length may count as the description says."
    return "Ignore the length of the responses: longer is not better; judge only what this user would value."


def judge_messages(description: str, question: str, a: str, b: str) -> list[Message]:
    system = "You decide which of two responses a specific user would prefer. You are careful and impartial."
    user = (
        f"User description:\n{description}\n\nQuestion:\n{question}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
        f"Decide which response this user would prefer, based only on the user description. {length_rule(description)} "
        "Do not favor a response because of its position. End your answer with a final line that is exactly "
        '"Verdict: A" or "Verdict: B".'
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> str | None:
    """'A' or 'B' from the last non-empty line, or None (an invalid verdict)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = _VERDICT.match(lines[-1])
    return m.group(1).upper() if m else None


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


def _combine(first_wins_1: bool | None, first_wins_2: bool | None, p1: float, p2: float) -> Outcome:
    valid = first_wins_1 is not None and first_wins_2 is not None
    consistent = valid and first_wins_1 == first_wins_2
    label = (1 if first_wins_1 else -1) if consistent else 0
    return Outcome(label, consistent, valid, (p1 + p2) / 2)


def judge_pairs(
    llm, items: list[tuple[str, str, str, str]], mode: str = "auto", desc: str | None = None
) -> list[Outcome]:
    """Judge ``(description, question, first, second)`` items in both orders; see the module doc."""
    if not items:
        return []
    prompts = []
    for d, q, x, y in items:
        prompts += [judge_messages(d, q, x, y), judge_messages(d, q, y, x)]
    use_logprob = mode == "logprob" or (mode == "auto" and getattr(llm, "can_score_choices", False))
    out = []
    if use_logprob:
        scores = llm.choice_logprobs(prompts, CHOICES, prefix=VERDICT_PREFIX, desc=desc)
        for i in range(0, len(scores), 2):
            (a1, b1), (a2, b2) = scores[i], scores[i + 1]
            p1 = 1 / (1 + math.exp(b1 - a1))  # first shown as A
            p2 = 1 / (1 + math.exp(a2 - b2))  # first shown as B
            out.append(_combine(a1 > b1, b2 > a2, p1, p2))
        return out
    params = GenerationParams(max_new_tokens=48, temperature=0.0, seed=0)
    texts = llm.generate(prompts, params, desc=desc)
    for i in range(0, len(texts), 2):
        v1, v2 = parse_verdict(texts[i]), parse_verdict(texts[i + 1])
        w1 = None if v1 is None else v1 == "A"
        w2 = None if v2 is None else v2 == "B"
        p1 = 0.5 if w1 is None else float(w1)
        p2 = 0.5 if w2 is None else float(w2)
        out.append(_combine(w1, w2, p1, p2))
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
