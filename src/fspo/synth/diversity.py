"""Lexical diversity of generated answers: is the data repetitive enough to teach loops?

A model trained on a corpus where every review follows one sentence skeleton ("The quality is
outstanding ...") learns that skeleton, and a small model under preference optimization loops on
it ("The quality of the quality of ..."). These numbers measure that property of the data itself,
cheaply and without a model, so templates can be compared before and after a change
(docs/synth.md, "Reviews: axes, wording and off-topic pairs").

Words are counted as the eval's acceptability flags count them: lower-cased ``[a-z0-9]+('[a-z]+)?``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(seq: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def has_repeated_ngram(text: str, n: int = 4) -> bool:
    """Does some word n-gram occur twice in ``text``?"""
    g = ngrams(words(text), n)
    return len(set(g)) < len(g)


def text_diversity(texts: Iterable[str]) -> dict:
    """Diversity of a corpus of answers; every occurrence counts, as training sees them.

    - ``distinct_2``, ``distinct_3``: distinct word n-grams / all word n-grams over the corpus
      (n-grams taken within each answer). Lower = more repetitive. Depends on corpus size, so
      compare corpora of the same size.
    - ``repeated_4gram_answers``: share of answers in which some word 4-gram occurs twice (a loop,
      a phrase used twice, or an item name written out in full twice).
    - ``top_4gram_share`` and ``top_4gram``: the 4-gram found in the most answers, and the share of
      answers that contain it (a shared sentence skeleton shows up here).
    - ``unique_answers``: distinct texts / answers (how often one text is reused across users).
    """
    occurrences = Counter(texts)
    total = sum(occurrences.values())
    if not total:
        return {"answers": 0}
    grams: dict[int, Counter] = {2: Counter(), 3: Counter()}
    in_answers: Counter = Counter()
    repeated = 0
    for t, k in occurrences.items():  # each distinct text once, weighted by how often it occurs
        w = words(t)
        for n in (2, 3):
            for g in ngrams(w, n):
                grams[n][g] += k
        g4 = ngrams(w, 4)
        s4 = set(g4)
        repeated += k * (len(s4) < len(g4))
        for g in s4:
            in_answers[g] += k
    top, top_n = min(in_answers.items(), key=lambda kv: (-kv[1], kv[0])) if in_answers else ((), 0)
    return {
        "answers": total,
        "unique_answers": round(len(occurrences) / total, 4),
        "distinct_2": round(len(grams[2]) / max(1, sum(grams[2].values())), 4),
        "distinct_3": round(len(grams[3]) / max(1, sum(grams[3].values())), 4),
        "repeated_4gram_answers": round(repeated / total, 4),
        "top_4gram_share": round(top_n / total, 4),
        "top_4gram": " ".join(top),
    }
