"""Candidate responses per question: templated, persona-steered, or view-conditioned; optionally an ensemble.

Each response records how it was steered (``steer``) and which generator wrote it. Responses
steered along measurable axes are measured, and those that do not express their steering are
dropped (and counted): a "positive" review that reads negative would teach the wrong preference.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

from fspo.data.attributes import AXES, measure
from fspo.errors import FspoError
from fspo.llm.base import GenerationParams
from fspo.synth.domain import Domain
from fspo.synth.templates import item_info, templated_review
from fspo.synth.views import list_views

_PREFIX = re.compile(r"^\s*(?:review|answer|response)\s*:\s*", re.I)


def clean_response(text: str) -> str:
    """Strip wrappers small models add (quotes, "Review:" prefixes, trailing fragments)."""
    text = _PREFIX.sub("", " ".join(text.split())).strip().strip('"').strip()
    if text and text[-1] not in ".!?" and "." in text:
        text = text[: text.rfind(".") + 1]
    return text


def steering_combos(domain: Domain) -> list[dict[str, str]]:
    axes = domain.steer_axes
    return [dict(zip(axes, c)) for c in itertools.product(*(domain.axes[a].values for a in axes))]


def expresses(steer: dict[str, str], text: str) -> bool:
    """Does ``text`` measurably express every measurable steering value?"""
    m = measure(text)
    return all(m.value(axis) == value for axis, value in steer.items() if axis in AXES)


def _prompt(domain: Domain, q: dict, steer: dict[str, str]) -> list[dict]:
    steering = "\n".join(f"- {a}: {v}" for a, v in steer.items())
    instructions = " ".join(domain.axes[a].steer.get(v, "") for a, v in steer.items()).strip()
    text = domain.responses["prompt"].format(
        item=q.get("item", q["question"]), question=q["question"], steering=steering, instructions=instructions
    )
    return [{"role": "user", "content": text.strip()}]


def _generate_grouped(llms: list, jobs: list[tuple[int, list, str]], params: GenerationParams, desc: str) -> list[str]:
    """Run jobs ``(backend index, prompt, salt)`` batched per backend; results in job order."""
    out: list[str] = [""] * len(jobs)
    for b, llm in enumerate(llms):
        idx = [i for i, j in enumerate(jobs) if j[0] == b]
        if not idx:
            continue
        label = desc if len(llms) == 1 else f"{desc} [{llm.name}]"
        texts = llm.generate([jobs[i][1] for i in idx], params, salts=[jobs[i][2] for i in idx], desc=label)
        for i, t in zip(idx, texts):
            out[i] = t
    return out


def build_responses(
    domain: Domain,
    questions: list[dict],
    seed: int,
    llms: list,
    counts: Counter,
    params: GenerationParams | None = None,
) -> list[list[dict]]:
    """Per question, the list of kept candidate responses ``{"id", "text", "steer", "generator"}``."""
    source = domain.response_source
    check = bool(domain.responses.get("check_attributes", source != "views"))
    params = params or GenerationParams(
        max_new_tokens=int(domain.responses.get("max_new_tokens", 96)),
        temperature=float(domain.responses.get("temperature", 1.0)),
        top_p=0.95,
        seed=seed,
    )
    per_q: list[list[dict]] = [[] for _ in questions]
    if source == "templates":
        variants = int(domain.responses.get("variants", 1))
        kinds = domain.templates["kinds"]
        for qi, q in enumerate(questions):
            if "spec" not in q:
                raise FspoError(
                    f"domain {domain.name}: templated responses need item questions; {q['question']!r} has no item "
                    "(questions from --questions-file need --responses steered)"
                )
            info = item_info(q["spec"], kinds)
            for ci, steer in enumerate(steering_combos(domain)):
                for v in range(variants):
                    rng = random.Random(f"fspo-template:{seed}:{q['question']}:{sorted(steer.items())}:{v}")
                    text = templated_review(domain.templates, info, steer, rng, counts)
                    if any(text == r["text"] for r in per_q[qi]):
                        counts["responses_dropped_duplicate"] += 1
                        continue
                    per_q[qi].append(
                        {
                            "id": f"r{ci}" + (f"v{v}" if v else ""),
                            "text": text,
                            "steer": steer,
                            "generator": "templates",
                            "variant": v,
                        }
                    )
    elif source == "steered":
        k = int(domain.responses.get("candidates", 1))
        combos = steering_combos(domain)
        jobs, where = [], []
        for qi, q in enumerate(questions):
            for ci, steer in enumerate(combos):
                for s in range(k):
                    jobs.append(((ci + s) % len(llms), _prompt(domain, q, steer), f"q{qi}:c{ci}:s{s}"))
                    where.append((qi, ci, s))
        texts = _generate_grouped(llms, jobs, params, "responses")
        chosen: dict[tuple[int, int], dict] = {}
        for (qi, ci, _s), job, raw in zip(where, jobs, texts):
            counts["responses_generated"] += 1
            if (qi, ci) in chosen:
                counts["responses_spare_candidates_unused"] += 1
                continue
            text, steer = clean_response(raw), combos[ci]
            if not text:
                counts["responses_dropped_empty"] += 1
            elif any(text == r["text"] for r in chosen.values() if r["qi"] == qi):
                counts["responses_dropped_duplicate"] += 1
            elif check and not expresses(steer, text):
                counts["responses_dropped_attribute_mismatch"] += 1
            else:
                chosen[(qi, ci)] = {
                    "id": f"r{ci}",
                    "text": text,
                    "steer": steer,
                    "generator": llms[job[0]].name,
                    "qi": qi,
                }
        for (qi, _ci), resp in sorted(chosen.items()):
            per_q[qi].append({k: v for k, v in resp.items() if k != "qi"})
    else:  # views
        k = int(domain.responses.get("views", 4))
        views, fallbacks = list_views(llms[0], [q["question"] for q in questions], k, seed)
        counts["views_fallback"] += fallbacks
        jobs, where = [], []
        for qi, q in enumerate(questions):
            for vi, view in enumerate(views[qi]):
                prompt = domain.responses["prompt"].format(question=q["question"], view=view, item=q.get("item", ""))
                jobs.append((vi % len(llms), [{"role": "user", "content": prompt.strip()}], f"q{qi}:v{vi}"))
                where.append((qi, vi, view))
        texts = _generate_grouped(llms, jobs, params, "responses")
        for (qi, vi, view), job, raw in zip(where, jobs, texts):
            text = clean_response(raw)
            counts["responses_generated"] += 1
            if not text or any(text == r["text"] for r in per_q[qi]):
                counts["responses_dropped_empty_or_duplicate"] += 1
                continue
            per_q[qi].append({"id": f"v{vi}", "text": text, "steer": {"view": view}, "generator": llms[job[0]].name})
    if source == "templates":
        counts["responses_generated"] += sum(len(r) for r in per_q) + counts["responses_dropped_duplicate"]
        if check:
            for qi in range(len(per_q)):
                kept = [r for r in per_q[qi] if expresses(r["steer"], r["text"])]
                counts["responses_dropped_attribute_mismatch"] += len(per_q[qi]) - len(kept)
                per_q[qi] = kept
    counts["responses_kept"] += sum(len(r) for r in per_q)
    return per_q
