"""Iterative persona refinement: make under-specified users self-consistent.

When a user's description cannot decide a pair (invalid or order-inconsistent verdicts), pick a
side at random (seeded), ask the model for the one fact about the user that this choice implies,
append it to the description, and relabel all of that user's pairs with the longer description.
The paper reports label entropy falling from 0.64 to 0.13 nats this way.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from fspo.llm.base import GenerationParams, Message
from fspo.synth.judge import Outcome

_SENT = re.compile(r"(?<=[.!?])\s+")


def fact_prompt(description: str, question: str, chosen: str, other: str) -> list[Message]:
    return [
        {
            "role": "user",
            "content": f"User description:\n{description}\n\nQuestion:\n{question}\n\nPreferred response:\n{chosen}\n\n"
            f"Other response:\n{other}\n\nThis user preferred the first response. Write the implied fact: one short "
            "sentence, in the third person, about what this user values that explains the choice and that the "
            "description does not already say. Reply with the sentence only.",
        }
    ]


def clean_fact(text: str, max_words: int = 30) -> str:
    text = " ".join(text.split()).strip().strip('"')
    first = _SENT.split(text)[0] if text else ""
    words = first.split()[:max_words]
    out = " ".join(words)
    if out and out[-1] not in ".!?":
        out += "."
    return out


def refine(
    llm,
    descriptions: dict[str, str],
    pairs: list[dict],
    outcomes: list[Outcome],
    relabel: Callable[[list[int], dict[str, str]], list[Outcome]],
    rounds: int,
    max_facts: int,
    seed: int,
) -> tuple[dict[str, str], list[Outcome], dict[str, list[str]]]:
    """Return updated descriptions, outcomes and the facts appended per user.

    ``pairs[i]`` has ``user``, ``question``, ``first``/``second`` texts; ``relabel(indices, descriptions)``
    judges those pairs again with the given descriptions.
    """
    descriptions = dict(descriptions)
    outcomes = list(outcomes)
    facts: dict[str, list[str]] = {}
    params = GenerationParams(max_new_tokens=48, temperature=0.7, top_p=0.95, seed=seed)
    for r in range(rounds):
        picks: list[tuple[str, int, bool]] = []  # (user, pair index, first chosen?)
        per_user: dict[str, int] = {}
        for i, (pair, out) in enumerate(zip(pairs, outcomes)):
            u = pair["user"]
            if out.consistent or per_user.get(u, 0) >= max_facts:
                continue
            per_user[u] = per_user.get(u, 0) + 1
            rng = random.Random(f"fspo-refine:{seed}:{r}:{u}:{i}")
            picks.append((u, i, rng.random() < 0.5))
        if not picks:
            break
        prompts = []
        for u, i, first in picks:
            p = pairs[i]
            chosen, other = (p["first"], p["second"]) if first else (p["second"], p["first"])
            prompts.append(fact_prompt(descriptions[u], p["question"], chosen, other))
        texts = llm.generate(
            prompts, params, salts=[f"refine{r}:{u}:{i}" for u, i, _ in picks], desc=f"refine r{r + 1}"
        )
        changed: set[str] = set()
        for (u, _i, _first), text in zip(picks, texts):
            fact = clean_fact(text)
            if fact:
                descriptions[u] = f"{descriptions[u]} {fact}".strip()
                facts.setdefault(u, []).append(fact)
                changed.add(u)
        idx = [i for i, p in enumerate(pairs) if p["user"] in changed]
        for i, out in zip(idx, relabel(idx, descriptions)):
            outcomes[i] = out
    return descriptions, outcomes, facts
