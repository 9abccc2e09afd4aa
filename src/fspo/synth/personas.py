"""Personas with structured diversity: attribute grids first, free-text elaboration second.

Sampling the grid (shuffled, without repeats until every combination is used) guarantees that
users cover the attribute space instead of clustering where a model's free imagination goes; the
elaboration then gives each user a natural description. Everything is reproducible from a seed.
"""

from __future__ import annotations

import itertools
import random
import re

from fspo.data.schema import UserProfile
from fspo.llm.base import GenerationParams, Message
from fspo.synth.domain import Domain

MAX_GRID = 100_000


def sample_attributes(domain: Domain, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` attribute dicts; distinct combinations first, cycling only when the grid is exhausted."""
    names = list(domain.axes)
    rng = random.Random(f"fspo-personas:{domain.name}:{seed}")
    size = 1
    for a in domain.axes.values():
        size *= len(a.values)
    if size <= MAX_GRID:
        grid = [dict(zip(names, combo)) for combo in itertools.product(*(domain.axes[a].values for a in names))]
        rng.shuffle(grid)
        return [dict(grid[i % len(grid)]) for i in range(n)]
    return [{a: rng.choice(domain.axes[a].values) for a in names} for _ in range(n)]


def core_description(domain: Domain, attributes: dict[str, str]) -> str:
    """The sentence stating the user's attributes (the part a labeler relies on)."""
    core = domain.persona.get("core") or " ".join(f"{{{a}}}" for a in domain.axes)
    return core.format(**{a: domain.axes[a].phrase(v) for a, v in attributes.items()})


def persona_prompt(domain: Domain, attributes: dict[str, str]) -> list[Message]:
    lines = "\n".join(f"- {a}: {domain.axes[a].phrase(v)}" for a, v in attributes.items())
    return [
        {
            "role": "user",
            "content": f"Describe this person in two sentences, in the third person, for a study about "
            f"{domain.description or domain.name}. Invent a plausible background consistent with the attributes; "
            f"do not contradict them.\nAttributes:\n{lines}\nReply with the two sentences only.",
        }
    ]


_SENT = re.compile(r"(?<=[.!?])\s+")


def clean_elaboration(text: str, max_sentences: int = 2, max_words: int = 60) -> str:
    """First sentences of a model's elaboration, unquoted and bounded (small models ramble)."""
    text = " ".join(text.replace("\n", " ").split()).strip().strip('"')
    sentences = [s for s in _SENT.split(text) if s.strip()][:max_sentences]
    words = " ".join(sentences).split()[:max_words]
    out = " ".join(words)
    if out and out[-1] not in ".!?":
        out += "."
    return out


def build_users(
    domain: Domain, n: int, seed: int, llm=None, params: GenerationParams | None = None
) -> list[UserProfile]:
    """Users ``u000``... with attributes, a core description, and an LLM elaboration when enabled."""
    attrs = sample_attributes(domain, n, seed)
    cores = [core_description(domain, a) for a in attrs]
    extra = [""] * n
    if llm is not None and domain.persona.get("elaborate", False):
        params = params or GenerationParams(max_new_tokens=80, temperature=0.9, top_p=0.95, seed=seed)
        prompts = [persona_prompt(domain, a) for a in attrs]
        outs = llm.generate(prompts, params, salts=[f"user{i}" for i in range(n)], desc="personas")
        extra = [clean_elaboration(o) for o in outs]
    return [
        UserProfile(f"u{i:03d}", (cores[i] + (" " + extra[i] if extra[i] else "")).strip(), attrs[i]) for i in range(n)
    ]
