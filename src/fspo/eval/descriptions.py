"""Does RAT's generated user description state the user's true attributes? (issue 13, section 3)

A RAT model writes ``## User Description`` before it answers. For domains whose users have
measurable ``attributes`` (reviews: sentiment, length, perspective; also reading level), the
description is correct when it names every one of the user's attribute values and none of the
opposite ones. The words per value cover the reviews domain's ``describe`` phrases
(src/fspo/synth/domains/reviews.yaml: "enthusiastic and positive", "short and to the point",
"told in the first person from the reviewer's own experience", ...) and common synonyms.

Rules (word-boundary, case-insensitive matches of the phrases in :data:`VALUE_PHRASES`):
- a phrase of value v counts for v; a phrase preceded within three words by a negation ("not",
  "no", "never", "dislikes", "avoids", "hates", "doesn't like", "without", ...) counts for the
  axis's other value ("does not like long reviews" states concise);
- an axis is *stated* as v when only v is counted; naming both values ("positive and negative
  aspects") or neither states nothing;
- a description states the user's attributes when every measurable axis of the user
  (:data:`fspo.data.attributes.AXES`) is stated with the user's value.

Plain string matching: a description that paraphrases with words not listed here counts as not
stating the value (the check errs towards "wrong"), and it does not judge fluency.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from fspo.data.attributes import AXES

VALUE_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "sentiment": {
        "positive": (
            "positive",
            "positively",
            "enthusiastic",
            "upbeat",
            "glowing",
            "favorable",
            "favourable",
            "praise",
            "praising",
            "optimistic",
        ),
        "negative": (
            "negative",
            "negatively",
            "critical",
            "harsh",
            "scathing",
            "unfavorable",
            "unfavourable",
            "pessimistic",
            "disappointed",
        ),
    },
    "length": {
        "concise": ("short", "concise", "brief", "to the point", "succinct", "terse", "one sentence", "compact"),
        "verbose": ("long", "detailed", "verbose", "lengthy", "thorough", "in-depth", "in depth", "elaborate"),
    },
    "perspective": {
        "personal": ("first person", "first-person", "own experience", "personal", "personally", "anecdotal"),
        "impersonal": (
            "third person",
            "third-person",
            "impersonal",
            "analytical",
            "objective",
            "detached",
        ),
    },
    "reading_level": {
        "simple": ("simple", "plain", "easy to read", "easy"),
        "advanced": ("advanced", "sophisticated", "technical", "complex"),
    },
}
NEGATIONS = (
    "not",
    "no",
    "never",
    "without",
    "dislike",
    "dislikes",
    "avoid",
    "avoids",
    "hate",
    "hates",
    "doesn't",
    "don't",
    "isn't",
    "nor",
    "neither",
)
NEGATION_WINDOW = 3  # words before a phrase that can negate it

_WORD = re.compile(r"[a-z0-9'-]+")


def _mentions(text: str, phrase: str) -> list[bool]:
    """For each occurrence of ``phrase`` in ``text`` (lower-case): is it negated?"""
    out = []
    for m in re.finditer(r"(?<![a-z0-9-])" + re.escape(phrase) + r"(?![a-z0-9-])", text):
        before = _WORD.findall(text[: m.start()])[-NEGATION_WINDOW:]
        out.append(any(w in NEGATIONS for w in before))
    return out


def stated_attributes(description: str) -> dict[str, str | None]:
    """Axis -> the value the description states (None: neither, or both values named)."""
    text = " ".join((description or "").lower().replace("’", "'").split())
    stated: dict[str, str | None] = {}
    for axis, values in VALUE_PHRASES.items():
        counted: set[str] = set()
        for value, phrases in values.items():
            other = [v for v in values if v != value]
            for phrase in phrases:
                for negated in _mentions(text, phrase):
                    counted.add(other[0] if negated and len(other) == 1 else value)
        stated[axis] = next(iter(counted)) if len(counted) == 1 else None
    return stated


def states_attributes(description: str | None, attributes: Mapping[str, str]) -> dict[str, bool] | None:
    """Per measurable axis of ``attributes``: does the description state the user's value?
    None when the user has no measurable axis."""
    axes = {a: v for a, v in attributes.items() if a in AXES and a in VALUE_PHRASES}
    if not axes:
        return None
    stated = stated_attributes(description or "")
    return {axis: stated[axis] == value for axis, value in axes.items()}


def description_accuracy(generations: Iterable[tuple[str, str | None]], users: Mapping) -> dict | None:
    """How often generated descriptions state the user's true attributes.

    ``generations``: (user_id, description) per generated answer; ``users``: user_id -> an object
    with ``attributes`` (a :class:`fspo.data.schema.UserProfile`) or the attributes mapping itself.
    Returns None when no generation belongs to a user with measurable attributes, else
    ``users`` (fraction of users for whom **every** generated description states all their values:
    the headline), ``descriptions`` (fraction of single descriptions that do), ``axes`` (per axis,
    over descriptions), ``n_users``, ``n_descriptions`` and ``missing`` (descriptions empty or
    absent)."""
    per_user: dict[str, list[bool]] = {}
    per_axis: dict[str, list[bool]] = {}
    missing = 0
    for user_id, description in generations:
        user = users.get(user_id)
        attrs = getattr(user, "attributes", user) or {}
        checks = states_attributes(description, attrs)
        if checks is None:
            continue
        if not (description or "").strip():
            missing += 1
        per_user.setdefault(user_id, []).append(all(checks.values()))
        for axis, ok in checks.items():
            per_axis.setdefault(axis, []).append(ok)
    if not per_user:
        return None
    flat = [ok for oks in per_user.values() for ok in oks]
    return {
        "users": sum(all(oks) for oks in per_user.values()) / len(per_user),
        "descriptions": sum(flat) / len(flat),
        "axes": {a: sum(v) / len(v) for a, v in per_axis.items()},
        "n_users": len(per_user),
        "n_descriptions": len(flat),
        "missing": missing,
    }
