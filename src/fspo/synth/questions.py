"""Questions per domain: from an item list, an inline list, a file, or generated; always de-duplicated.

Near-duplicates waste the few-shot budget (two shots that say the same thing), so questions are
compared after normalization and by word overlap, not just as exact strings.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from fspo.errors import FspoError
from fspo.llm.base import GenerationParams
from fspo.synth.domain import Domain

_WORDS = re.compile(r"[a-z0-9]+")
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*])\s*(.+?)\s*$")


def normalize(q: str) -> str:
    return " ".join(_WORDS.findall(q.lower()))


def dedupe(questions: list[str], jaccard: float = 0.8) -> list[str]:
    """Keep the first of each group of (near-)duplicates, in order."""
    kept: list[str] = []
    seen: set[str] = set()
    bags: list[set[str]] = []
    for q in questions:
        q = " ".join(q.split())
        norm = normalize(q)
        if not norm or norm in seen:
            continue
        bag = set(norm.split())
        if any(len(bag & b) / max(1, len(bag | b)) >= jaccard for b in bags):
            continue
        seen.add(norm)
        bags.append(bag)
        kept.append(q)
    return kept


def read_question_file(path: str | Path) -> list[str]:
    """One question per line (``.txt``) or JSONL rows with a ``question`` or ``prompt`` field."""
    p = Path(path)
    if not p.exists():
        raise FspoError(f"{p}: questions file not found")
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FspoError(f"{p}:{i}: <json>: {exc.msg}") from None
            q = row.get("question") or row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(q, str):
                raise FspoError(f"{p}:{i}: question: missing (need a 'question' or 'prompt' string)")
            out.append(q)
        else:
            out.append(line.strip())
    return out


def parse_numbered(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m and len(m.group(1).split()) >= 3:
            out.append(m.group(1).strip().strip('"'))
    return out


def generate_questions(domain: Domain, n: int, llm, seed: int, seeds: list[str]) -> list[str]:
    """Ask the model for new questions in batches of 10 until ``n`` distinct ones exist (bounded tries)."""
    topic = domain.questions.get("topic", domain.description or domain.name)
    examples = "\n".join(f"- {q}" for q in seeds[:5])
    found: list[str] = []
    params = GenerationParams(max_new_tokens=300, temperature=1.0, top_p=0.95, seed=seed)
    for round_ in range(max(3, n // 5)):
        k = 10
        prompt = [
            {
                "role": "user",
                "content": f"Write {k} new questions that different people might ask.\nTopic: {topic}\n"
                + (f"Examples:\n{examples}\n" if examples else "")
                + "Reply with a numbered list, one question per line.",
            }
        ]
        text = llm.generate([prompt], params, salts=[f"questions{round_}"], desc=None)[0]
        found = dedupe(found + parse_numbered(text))
        if len(found) >= n:
            break
    return found


def build_questions(domain: Domain, n: int, seed: int, llm=None, extra_file: str | None = None) -> list[dict]:
    """``n`` distinct questions as ``{"question", "item"?}`` dicts, sampled reproducibly from the pool."""
    q = domain.questions
    source = q.get("source")
    pool: list[dict] = []
    if source == "items":
        for it in q["items"]:
            name = it["item"] if isinstance(it, dict) else it
            pool.append({"question": q["template"].format(item=name), "item": name, "spec": it})
    elif source == "list":
        pool = [{"question": s} for s in q["items"]]
    elif source == "file":
        pool = [{"question": s} for s in read_question_file(q["file"])]
    if extra_file:
        pool += [{"question": s} for s in read_question_file(extra_file)]
    if source == "generate" or (q.get("generate_more") and len(pool) < n):
        if llm is None:
            raise FspoError(f"domain {domain.name}: generating questions needs an LLM backend (--backend)")
        got = generate_questions(domain, n - len(pool) if pool else n, llm, seed, [p["question"] for p in pool])
        pool += [{"question": s} for s in got]
    by_text: dict[str, dict] = {}
    for row in pool:
        by_text.setdefault(" ".join(row["question"].split()), row)
    distinct = [by_text[t] for t in dedupe(list(by_text))]
    if len(distinct) < n:
        raise FspoError(
            f"domain {domain.name}: only {len(distinct)} distinct questions available, {n} requested "
            "(lower --questions, add --questions-file, or set questions.generate_more)"
        )
    rng = random.Random(f"fspo-questions:{domain.name}:{seed}")
    return rng.sample(distinct, n)
