"""The pairwise-judge core shared by synth's labeler and eval's LLM judge.

One prompt, one verdict parser, one both-order combination. The prompt shows the user's
description, the question and two responses, and asks for a final line ``Verdict: A`` or
``Verdict: B`` (``Verdict: TIE`` too where ties are allowed: eval). Each pair is asked in both
orders; a verdict counts only when both orders name the same response, because a winner that
changes with the order is position bias. The judge is told to ignore length unless the
description itself is about length (LLM judges favour longer answers).
"""

from __future__ import annotations

import re

from fspo.llm.base import Message

VERDICT_PREFIX = "Verdict:"
CHOICES = (" A", " B")
LENGTH_WORDS = re.compile(r"\b(length|long|short|brief|concise|verbose|detailed|wordy|terse|succinct)\b", re.I)
_VERDICT = re.compile(r"^\W*verdict\W*:\W*(a|b|tie)\W*$", re.IGNORECASE)
SYSTEM = "You decide which of two responses a specific user would prefer. You are careful and impartial."


def length_rule(description: str) -> str:
    if LENGTH_WORDS.search(description):
        return "The user's description mentions length, so length may count as the description says."
    return "Ignore the length of the responses: longer is not better; judge only what this user would value."


def judge_messages(description: str, question: str, a: str, b: str, allow_tie: bool = False) -> list[Message]:
    """The judge prompt as chat messages (a system turn and a user turn)."""
    ending = (
        'If neither fits this user better, answer TIE. End your answer with a final line that is exactly "Verdict: A", '
        '"Verdict: B" or "Verdict: TIE".'
        if allow_tie
        else 'End your answer with a final line that is exactly "Verdict: A" or "Verdict: B".'
    )
    description = description.strip() or "(no description)"
    user = (
        f"User description:\n{description}\n\nQuestion:\n{question.strip()}\n\n"
        f"Response A:\n{a.strip() or '(empty)'}\n\nResponse B:\n{b.strip() or '(empty)'}\n\n"
        f"Decide which response this user would prefer, based only on the user description. {length_rule(description)} "
        f"Do not favor a response because of its position. {ending}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def flatten(messages: list[Message]) -> str:
    """The messages as one plain-text prompt, for backends without a chat template."""
    return "\n\n".join(str(m["content"]) for m in messages)


def parse_verdict(text: str, allow_tie: bool = True) -> str | None:
    """The verdict on the last non-empty line: ``"A"``, ``"B"``, ``"TIE"`` (if allowed), or None.

    Strict on purpose: a verdict anywhere else (e.g. "A is better" in the reasoning) is not read,
    so a rambling judge shows up as unparseable instead of as a silent guess. Case, surrounding
    markdown emphasis and a trailing period are tolerated.
    """
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = _VERDICT.match(lines[-1])
    if not m or (m.group(1).upper() == "TIE" and not allow_tie):
        return None
    return m.group(1).upper()


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


def both_orders(items: list[tuple[str, str, str, str]], allow_tie: bool = False) -> list[list[Message]]:
    """Prompts for ``(description, question, a, b)`` items: item i as (a, b) at 2i, as (b, a) at 2i+1."""
    prompts = []
    for description, question, a, b in items:
        prompts += [
            judge_messages(description, question, a, b, allow_tie),
            judge_messages(description, question, b, a, allow_tie),
        ]
    return prompts
