"""Measurable user axes and the attribute judge built on them.

For domains whose users differ along measurable axes (review sentiment, answer length, reading
level, perspective), a user's hidden attributes decide which of two responses they prefer. This
makes labels and win rates deterministic, free and testable on a CPU. Measurements use well-kept
libraries: VADER for sentiment, the Flesch-Kincaid grade with pyphen's hyphenation dictionaries for
reading level, a word count for length, and the rate of first-person pronouns for perspective.
(textstat's own grade function fetches NLTK's cmudict from the network on first use, which an
offline machine cannot do; pyphen is the fallback textstat uses.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

# Axis -> allowed values. Thresholds are documented in docs/evaluation.md (perspective: docs/synth.md).
AXES: dict[str, tuple[str, ...]] = {
    "sentiment": ("positive", "negative"),
    "length": ("concise", "verbose"),
    "reading_level": ("simple", "advanced"),
    "perspective": ("personal", "impersonal"),
}
SENTIMENT_THRESHOLD = 0.05  # VADER's own convention for positive / negative compound scores
CONCISE_MAX_WORDS = 25
SIMPLE_MAX_GRADE = 8.0
PERSONAL_MIN_RATE = 0.03
"""``perspective``: a text is ``personal`` (the reviewer's own experience, in the first person) when
at least this share of its words are first-person pronouns (:data:`FIRST_PERSON`), else
``impersonal`` (third-person, analytical). 0.03 is one pronoun per 33 words: a 15-word personal
sentence has one or two (0.07-0.13) and a 45-word personal review three or more (0.07+), while an
impersonal review has none (0.0). A single stray "I would recommend it" in a 45-word review (0.022)
stays impersonal. Measured in docs/synth.md (reviews domain: templates and base SmolLM2 answers)."""

_FIRST_PERSON = "i me my mine myself we us our ours ourselves i'm i've i'd i'll we're we've we'd we'll"
FIRST_PERSON = frozenset(_FIRST_PERSON.split())
"""First-person singular and plural pronouns and their contractions (lower-cased words)."""

_WORD = re.compile(r"[A-Za-z0-9']+")


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def sentiment_score(text: str) -> float:
    """VADER compound score in [-1, 1]."""
    return float(_vader().polarity_scores(text)["compound"])


@lru_cache(maxsize=1)
def _pyphen():
    import pyphen

    return pyphen.Pyphen(lang="en_US")


_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


@lru_cache(maxsize=65536)
def syllables(word: str) -> int:
    return len(_pyphen().positions(word.lower())) + 1


def reading_grade(text: str) -> float:
    """Flesch-Kincaid grade level: 0.39 words/sentence + 11.8 syllables/word - 15.59."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    sentences = max(1, len(_SENTENCE_END.findall(text.strip() + " ")))
    syl = sum(syllables(w) for w in words)
    return 0.39 * len(words) / sentences + 11.8 * syl / len(words) - 15.59


def first_person_rate(text: str) -> float:
    """Share of the words that are first-person pronouns (0.0 for an empty text)."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    return sum(w.lower() in FIRST_PERSON for w in words) / len(words)


@dataclass(frozen=True)
class Measurement:
    sentiment: float
    words: int
    grade: float
    first_person: float = 0.0

    def value(self, axis: str) -> str | None:
        """The axis value this text expresses, or None when it is neutral on that axis."""
        if axis == "sentiment":
            if self.sentiment >= SENTIMENT_THRESHOLD:
                return "positive"
            if self.sentiment <= -SENTIMENT_THRESHOLD:
                return "negative"
            return None
        if axis == "length":
            return "concise" if self.words <= CONCISE_MAX_WORDS else "verbose"
        if axis == "reading_level":
            return "simple" if self.grade <= SIMPLE_MAX_GRADE else "advanced"
        if axis == "perspective":
            return "personal" if self.first_person >= PERSONAL_MIN_RATE else "impersonal"
        raise KeyError(f"unknown attribute axis {axis!r}; known: {', '.join(AXES)}")


@lru_cache(maxsize=65536)
def measure(text: str) -> Measurement:
    """Every axis's measurement of ``text`` (memoized: synth measures each response several times)."""
    return Measurement(sentiment_score(text), word_count(text), reading_grade(text), first_person_rate(text))


def matches(attributes: Mapping[str, str], text: str) -> dict[str, bool]:
    """Per measurable axis of the user: does ``text`` express the user's value?"""
    m = measure(text)
    return {axis: m.value(axis) == want for axis, want in attributes.items() if axis in AXES}


def match_count(attributes: Mapping[str, str], text: str) -> int:
    return sum(matches(attributes, text).values())


def attribute_preference(attributes: Mapping[str, str], a: str, b: str) -> int:
    """+1 if a user with ``attributes`` prefers ``a``, -1 for ``b``, 0 for a tie.

    A response scores one point per measurable axis on which it expresses the user's value;
    the higher score wins. Axes the judge cannot measure are ignored.
    """
    if not any(axis in AXES for axis in attributes):
        raise ValueError(f"none of the user's attributes {sorted(attributes)} is measurable ({', '.join(AXES)})")
    sa, sb = match_count(attributes, a), match_count(attributes, b)
    return (sa > sb) - (sa < sb)
