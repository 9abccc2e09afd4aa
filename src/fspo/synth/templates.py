"""Templated reviews: fluent, varied, item-specific text that measurably expresses its steering.

The reviews domain's ``templates`` section (``domains/reviews.yaml``) is a small grammar:

- ``kinds``: per kind of item (movie, book, restaurant, ...), the verbs a reviewer uses
  ("watched", "ate at"), occasions ("on a rainy Sunday"), the aspects a review of that kind talks
  about (``np`` "the service" with positive and negative predicates "is warm and attentive"), the
  preposition that places a detail ("At Blue Harbor, ..."), audiences and a "worth ..." phrase.
- sentence banks, by perspective (``personal``: first person, the reviewer's experience;
  ``impersonal``: third person, no first-person pronoun) and sentiment: ``concise`` (a whole
  one-sentence review), ``opening`` and ``lead`` (the first sentence of a longer review; it names
  the item in full), ``detail`` (sentiment-neutral shapes whose aspect or feature slots carry the
  sentiment) and ``closing``.
- ``adjectives`` and ``feature_predicates`` by sentiment.

Each question's item carries its ``kind``, a ``short`` name for later mentions ("Blue Harbor"),
its kind's ``noun`` ("restaurant") and item-specific ``features`` ("the grilled octopus"). A concise review
is one sentence that names the item; a verbose one opens with the item's full name, adds details
until it has 32-50 words, usually closes, and names the item at least twice. Slots are
``{item} {short} {noun} {prep} {past} {present} {occasion} {adj} {adj2} {a_adj} {aspect} {aspect2}
{feature} {fpred} {audience} {worth}``; a capitalized slot (``{Item}``) capitalizes its value.

Every candidate is checked before it is kept: it expresses each steered axis as
:mod:`fspo.data.attributes` measures it, names the item (twice when verbose), has no repeated word
4-gram, and its length is in range. A candidate that fails is redrawn from the same seeded random
stream (``templates_redrawn`` counts the redraws), so the output is deterministic.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fspo.data.attributes import AXES, measure, word_count
from fspo.errors import FspoError
from fspo.synth.diversity import has_repeated_ngram

SENTIMENTS = ("positive", "negative")
PERSPECTIVES = ("personal", "impersonal")
CONCISE_WORDS = (6, 20)
VERBOSE_WORDS = (32, 50)
MAX_DRAWS = 80
_SLOTS = "item short noun prep past present occasion adj adj2 a_adj aspect aspect2 feature fpred audience worth"
SLOTS = frozenset(_SLOTS.split())
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass
class ItemInfo:
    """A reviewed item: the question's phrase, its kind, a short name, its kind's noun and its features."""

    item: str
    kind: str
    short: str
    noun: str
    features: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The short name without a leading article, lower-cased: what counts as naming the item again."""
        return re.sub(r"^(?:the|a|an)\s+", "", self.short.strip(), flags=re.I).lower()


def item_info(entry: Any, kinds: dict[str, Any] | None = None) -> ItemInfo:
    """An :class:`ItemInfo` from a question item: a mapping (``item``, ``kind``, ``short``, ``features``;
    optional ``noun``, else the kind's first noun) or a bare string (kind ``thing``, short name = the
    whole phrase)."""
    if isinstance(entry, str):
        return ItemInfo(entry, "thing", entry, "one", [])
    kind = str(entry.get("kind", "thing"))
    nouns = ((kinds or {}).get(kind) or {}).get("nouns") or ["one"]
    return ItemInfo(
        str(entry["item"]),
        kind,
        str(entry.get("short") or entry["item"]),
        str(entry.get("noun") or nouns[0]),
        [str(f) for f in entry.get("features") or []],
    )


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _article(phrase: str) -> str:
    word = phrase.split()[0].lower() if phrase.split() else ""
    an = word[:1] in "aeio" or (word[:1] == "u" and not word.startswith(("use", "uni", "usu")))
    return ("an " if an else "a ") + phrase


def check_templates(templates: Any, path: str) -> None:
    """One-line errors for a malformed ``templates`` section (domain loading calls this)."""

    def need_list(obj: Any, where: str) -> list:
        if not isinstance(obj, list) or not obj or not all(isinstance(x, str) and x.strip() for x in obj):
            raise FspoError(f"{path}: templates.{where}: a non-empty list of strings is required")
        for s in obj:
            for slot in _SLOT.findall(s):
                if slot.lower() not in SLOTS and (slot[:1].lower() + slot[1:]) not in SLOTS:
                    raise FspoError(f"{path}: templates.{where}: unknown slot {{{slot}}} in {s!r}")
        return obj

    if not isinstance(templates, dict):
        raise FspoError(f"{path}: templates: expected a mapping")
    for part in ("concise", "opening", "lead", "closing"):
        for persp in PERSPECTIVES:
            for sent in SENTIMENTS:
                need_list(((templates.get(part) or {}).get(persp) or {}).get(sent), f"{part}.{persp}.{sent}")
    for persp in PERSPECTIVES:
        need_list((templates.get("detail") or {}).get(persp), f"detail.{persp}")
    for sent in SENTIMENTS:
        need_list((templates.get("adjectives") or {}).get(sent), f"adjectives.{sent}")
        need_list((templates.get("feature_predicates") or {}).get(sent), f"feature_predicates.{sent}")
    kinds = templates.get("kinds")
    if not isinstance(kinds, dict) or not kinds:
        raise FspoError(f"{path}: templates.kinds: a mapping of item kinds is required")
    for kind, spec in kinds.items():
        if not isinstance(spec, dict):
            raise FspoError(f"{path}: templates.kinds.{kind}: expected a mapping")
        for part in ("nouns", "past", "present", "occasions", "prep", "worth"):
            need_list(spec.get(part), f"kinds.{kind}.{part}")
        for sent in SENTIMENTS:
            need_list((spec.get("audience") or {}).get(sent), f"kinds.{kind}.audience.{sent}")
        aspects = spec.get("aspects")
        if not isinstance(aspects, list) or len(aspects) < 2:
            raise FspoError(f"{path}: templates.kinds.{kind}.aspects: a list of at least two aspects is required")
        for i, a in enumerate(aspects):
            if not isinstance(a, dict) or not isinstance(a.get("np"), str):
                raise FspoError(f"{path}: templates.kinds.{kind}.aspects[{i}]: needs np, positive, negative")
            for sent in SENTIMENTS:
                need_list(a.get(sent), f"kinds.{kind}.aspects[{i}].{sent}")


class _Review:
    """One draw: slot values sampled without repeats inside a review."""

    def __init__(self, bank: dict, info: ItemInfo, sentiment: str, rng: random.Random) -> None:
        self.bank, self.info, self.sent, self.rng = bank, info, sentiment, rng
        self.kind = bank["kinds"].get(info.kind) or bank["kinds"][next(iter(bank["kinds"]))]
        self.used: dict[str, set] = {}

    def pick(self, pool: list, tag: str):
        used = self.used.setdefault(tag, set())
        fresh = [i for i in range(len(pool)) if i not in used]
        i = self.rng.choice(fresh or range(len(pool)))
        used.add(i)
        return pool[i]

    def slot(self, name: str) -> str:
        info, kind, sent = self.info, self.kind, self.sent
        if name == "item":
            return info.item
        if name == "short":
            return info.short
        if name == "noun":
            return info.noun
        if name == "prep":
            return self.rng.choice(kind["prep"]) + " " + info.short
        if name in ("past", "present", "occasion", "worth"):
            return self.pick(kind[name if name != "occasion" else "occasions"], name)
        if name in ("adj", "adj2"):
            return self.pick(self.bank["adjectives"][sent], "adj")
        if name == "a_adj":
            return _article(self.pick(self.bank["adjectives"][sent], "adj"))
        if name in ("aspect", "aspect2"):
            a = self.pick(kind["aspects"], "aspect")
            return f"{a['np']} {self.rng.choice(a[sent])}"
        if name == "feature":
            if info.features:
                return self.pick(info.features, "feature")
            a = self.pick(kind["aspects"], "aspect")
            return a["np"]
        if name == "fpred":
            return self.pick(self.bank["feature_predicates"][sent], "fpred")
        if name == "audience":
            return self.pick(kind["audience"][sent], "audience")
        raise KeyError(name)

    def fill(self, shape: str) -> str:
        def rep(m: re.Match) -> str:
            name = m.group(1)
            value = self.slot(name[:1].lower() + name[1:])
            return _cap(value) if name[:1].isupper() else value

        return _cap(_SLOT.sub(rep, shape).strip())

    def sentence(self, part: str, persp: str) -> str:
        pool = self.bank[part][persp] if part == "detail" else self.bank[part][persp][self.sent]
        tag = f"{part}:{persp}"
        if len(self.used.get("feature", ())) >= len(self.info.features):  # every feature mentioned once
            used = self.used.setdefault(tag, set())
            no_feature = [i for i, shape in enumerate(pool) if "eature}" not in shape]
            used.update(i for i in range(len(pool)) if i not in no_feature)
            if not no_feature:
                return self.fill(pool[self.rng.randrange(len(pool))])
        return self.fill(self.pick(pool, tag))


def acceptable(text: str, info: ItemInfo, steer: dict[str, str]) -> bool:
    """Does a candidate express its steering, name its item (twice if verbose), avoid repeated 4-grams,
    and have a length in range?"""
    n = word_count(text)
    verbose = steer.get("length") == "verbose"
    lo, hi = VERBOSE_WORDS if verbose else CONCISE_WORDS
    if not lo <= n <= hi or has_repeated_ngram(text, 4):
        return False
    low = text.lower()
    if info.item.lower() not in low or (verbose and low.count(info.key) < 2):
        return False
    m = measure(text)
    return all(m.value(axis) == value for axis, value in steer.items() if axis in AXES)


def draft(bank: dict, info: ItemInfo, steer: dict[str, str], rng: random.Random) -> str:
    """One candidate review (not yet checked)."""
    sent = steer.get("sentiment", "positive")
    persp = steer.get("perspective", "impersonal")
    r = _Review(bank, info, sent, rng)
    if steer.get("length", "concise") != "verbose":
        return r.sentence("concise", persp)
    sentences = [r.sentence("lead" if rng.random() < 0.3 else "opening", persp)]
    target = rng.randint(VERBOSE_WORDS[0], VERBOSE_WORDS[0] + 10)
    closing = rng.random() < 0.85
    while word_count(" ".join(sentences)) < target - (8 if closing else 0) and len(sentences) < 5:
        sentences.append(r.sentence("detail", persp))
    if closing:
        sentences.append(r.sentence("closing", persp))
    return " ".join(sentences)


def templated_review(bank: dict, info: ItemInfo, steer: dict[str, str], rng: random.Random, counts: Counter) -> str:
    """The first draft that :func:`acceptable` keeps (redraws counted); after :data:`MAX_DRAWS`
    failures, the last draft (counted as ``templates_unmatched``; the attribute check may drop it)."""
    text = ""
    for i in range(MAX_DRAWS):
        text = draft(bank, info, steer, rng)
        if acceptable(text, info, steer):
            counts["templates_redrawn"] += i
            return text
    counts["templates_redrawn"] += MAX_DRAWS - 1
    counts["templates_unmatched"] += 1
    return text
