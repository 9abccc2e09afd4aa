"""Does a trained model still write acceptable answers for people the synthetic templates cannot
express? (issue 13: out-of-template users.)

``examples/out_of_template`` holds hand-written users whose tastes the reviews templates do not
have (balanced pros and cons, concrete specs, comparisons, family fit, personal anecdotes), each
with four labeled pairs (``meta.role: shot``) and two questions (``meta.role: question``). The
trained model answers each question from the user's four shots, the base model answers it
zero-shot, and every answer is flagged by the acceptability checks (on topic, not degenerate,
no template leak). There is no attribute to judge these tastes by: this check is about whether
a person would accept the text at all, and its samples are printed to be read.
"""

from __future__ import annotations

from dataclasses import dataclass

from fspo.data.episodes import Episode
from fspo.data.io import load_data
from fspo.data.prompts import ZEROSHOT
from fspo.eval.acceptability import assess, embedding_similarity
from fspo.eval.generate import ModelPool, generate_method
from fspo.llm.cache import CallCache

DATA = "examples/out_of_template"


@dataclass(frozen=True)
class Row:
    name: str  # what answered: the trained model, or the base model zero-shot
    spec: str
    layout: str
    chat_template: bool = False
    max_length: int = 1024


def episodes(path: str = DATA) -> list[Episode]:
    """One episode per question: the user's shots (their labeled pairs) and the question."""
    data = load_data(path)
    out = []
    for user in sorted({r.user_id for r in data.prefs}):
        rows = [r for r in data.prefs if r.user_id == user]
        shots = tuple(r for r in rows if r.meta.get("role") != "question")
        out += [Episode(user, shots, q) for q in rows if q.meta.get("role") == "question"]
    return out


def check(rows: list[Row], pool: ModelPool, cache: CallCache, path: str = DATA, max_new_tokens: int = 64) -> dict:
    """Answers of each row to every out-of-template question, with their acceptability flags."""
    eps = episodes(path)
    result: dict = {"data": path, "questions": len(eps), "rows": {}}
    for row in rows:
        layout = row.layout if row.layout else ZEROSHOT.name
        gens, _ = generate_method(
            row.name, layout, row.spec, eps, {}, pool, cache, max_new_tokens, row.max_length, row.chat_template
        )
        sims = embedding_similarity([(g.question, g.answer) for g in gens]) or [None] * len(gens)
        answers = []
        for ep, g, sim in zip(eps, gens, sims):
            shot_texts = [x for s in ep.shots for x in (s.chosen, s.rejected)]
            flags = assess(g.question, g.answer, shot_texts, similarity=sim)
            answers.append({"user_id": g.user_id, "question": g.question, "answer": g.answer} | flags.to_dict())
        n = len(answers) or 1
        result["rows"][row.name] = {
            "model": row.spec,
            "layout": layout,
            "on_topic": sum(not (a["empty"] or a["off_topic"]) for a in answers) / n,
            "degenerate": sum(a["degenerate"] for a in answers) / n,
            "acceptable": sum(a["acceptable"] for a in answers) / n,
            "answers": answers,
        }
    return result


def report_lines(result: dict, samples: int = 3) -> list[str]:
    """A markdown section: the rates per row and sample answers to read."""
    lines = [
        f"{result['questions']} questions of {len({a['user_id'] for r in result['rows'].values() for a in r['answers']})} "
        "hand-written users whose tastes the templates do not express (`examples/out_of_template`).",
        "",
        "| answered by | on-topic | degenerate | acceptable |",
        "|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {100 * r['on_topic']:.0f}% | {100 * r['degenerate']:.0f}% | {100 * r['acceptable']:.0f}% |"
        )
    for name, r in result["rows"].items():
        lines += ["", f"Samples, {name}:", ""]
        for a in r["answers"][:: max(1, len(r["answers"]) // samples)][:samples]:
            flags = ", ".join(a["flags"]) or "acceptable"
            lines.append(f'- *{a["question"]}* ({a["user_id"]}) -> "{a["answer"][:300]}" [{flags}]')
    return lines
