"""View conditioning: list distinct views on a question, then answer once from each.

High-temperature sampling of one small model gives near-duplicates (paper: mean similarity 0.94);
making each response argue from a different view is what spreads them out.
"""

from __future__ import annotations

from fspo.llm.base import GenerationParams, Message
from fspo.synth.questions import dedupe, parse_numbered

FALLBACK_VIEWS = [
    "the cheapest practical option",
    "the healthiest option",
    "the most fun and adventurous option",
    "the most traditional option",
    "the quickest option",
    "the most social option",
]


def views_prompt(question: str, k: int) -> list[Message]:
    return [
        {
            "role": "user",
            "content": f"List {k} distinct views or approaches a person might take on this question, each in a few "
            f"words, as a numbered list.\nQuestion: {question}",
        }
    ]


def list_views(llm, questions: list[str], k: int, seed: int) -> tuple[list[list[str]], int]:
    """``k`` views per question and the number of fallback views needed (when a model lists too few)."""
    params = GenerationParams(max_new_tokens=120, temperature=0.8, top_p=0.95, seed=seed)
    outs = llm.generate([views_prompt(q, k) for q in questions], params, desc="views")
    views, fallbacks = [], 0
    for text in outs:
        got = [v.rstrip(".") for v in dedupe(parse_numbered(text) + [])][:k]
        while len(got) < k:
            got.append(FALLBACK_VIEWS[(len(got) + fallbacks) % len(FALLBACK_VIEWS)])
            fallbacks += 1
        views.append(got)
    return views, fallbacks
