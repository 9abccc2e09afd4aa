"""Contrasting user descriptions for RAT's preference pairs (``data.rat_contrast``).

RAT writes a user description, then answers. With the user's gold description on both sides of a
pair, the preference loss never sees the description (the common leading tokens move into the
prompt, :meth:`fspo.data.truncation.TokenizedPair.preference_view`) and only an NLL term trains it;
on the quality benchmark the descriptions a model wrote that way stated held-out users' attributes
at chance (docs/benchmarks.md). Synthetic pairs record the attributes each answer was written for
(``meta.rejected_steer``, or ``rejected_attributes``); giving the rejected completion the description of a user with *those*
attributes makes it a consistent "other user" completion, and the preference loss then rewards
reading the shots into the right description as well as the right answer.

The contrasting description comes from users.jsonl: the text that every training user with exactly
those attributes shares. Where descriptions are written from a template (the synth domains'
``persona.core``), users with the same attributes have the same text, so no user's own words reach
another user's pair, and the two descriptions differ only in the attribute words (no format leak).
An attribute combination whose users have different descriptions (elaborated personas, real users)
gives none, and such a pair keeps the gold description on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fspo.data.schema import PreferenceRecord, UserProfile

AttributeKey = tuple[tuple[str, str], ...]
REJECTED_ATTRIBUTE_KEYS = ("rejected_steer", "rejected_attributes")
"""Where a pair's meta records the attributes its rejected answer has: ``fspo synth`` writes
``rejected_steer`` (what the answer was written for), the bundled examples ``rejected_attributes``."""


def attribute_key(attributes: Mapping[str, object]) -> AttributeKey:
    return tuple(sorted((str(k), str(v)) for k, v in attributes.items()))


def shared_descriptions(users: Iterable[UserProfile]) -> dict[AttributeKey, str]:
    """Attribute combination -> the description all its users share; combinations whose users
    have different descriptions are left out (their text is a user's own)."""
    seen: dict[AttributeKey, set[str]] = {}
    for user in users:
        if user.attributes and user.description.strip():
            seen.setdefault(attribute_key(user.attributes), set()).add(user.description.strip())
    return {key: texts.pop() for key, texts in seen.items() if len(texts) == 1}


def rejected_description(record: PreferenceRecord, table: Mapping[AttributeKey, str]) -> str | None:
    """The description of a user who would prefer ``record.rejected`` (None: unknown)."""
    meta = record.meta if isinstance(record.meta, Mapping) else {}
    for key in REJECTED_ATTRIBUTE_KEYS:
        attributes = meta.get(key)
        if isinstance(attributes, Mapping) and attributes:
            return table.get(attribute_key(attributes))
    return None
