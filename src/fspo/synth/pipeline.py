"""The resumable synth run: personas -> questions -> responses -> pairs -> labels -> refinement -> files.

Every model call goes through the SQLite call cache in ``OUT/.cache/calls.sqlite``, so a run that
is killed (even with kill -9) and started again replays completed calls and only sends the rest.
All randomness is seeded, and the final files are written atomically at the end, so a resumed run
writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from fspo.data.attributes import AXES
from fspo.data.io import check_output_folder, lock_output, write_jsonl, write_text_atomic
from fspo.data.schema import PreferenceRecord, UserProfile, same_answer
from fspo.data.splits import assign_splits, split_questions, split_users
from fspo.errors import FspoError
from fspo.llm.cache import CachedBackend, CallCache
from fspo.synth import diagnostics as diag_mod
from fspo.synth.config import SynthConfig
from fspo.synth.diversity import text_diversity
from fspo.synth.domain import Domain, load_domain
from fspo.synth.judge import Outcome, attribute_outcome, judge_pairs
from fspo.synth.personas import build_users
from fspo.synth.questions import build_questions
from fspo.synth.refine import refine
from fspo.synth.responses import build_responses

CACHE_NAME = ".cache/calls.sqlite"
SIMILARITY_MAX_PER_QUESTION = 24
"""MiniLM similarity uses at most this many responses per question: the first variant of every
combination, then the second, ... (for reviews: three variants of each of the 8 combinations)."""


def _needs_llm(domain: Domain, cfg: SynthConfig) -> list[str]:
    needs = []
    if domain.response_source != "templates":
        needs.append(f"responses.source={domain.response_source}")
    if domain.labeler == "judge":
        needs.append("labeler=judge")
    if domain.questions.get("source") == "generate":
        needs.append("questions.source=generate")
    return needs


def _shared_order(n: int, seed: int, qi: int) -> list[tuple[int, int]]:
    """All pairs of a question's ``n`` responses, shuffled per question (the same order for every user)."""
    cand = [(i, j) for i in range(n) for j in range(i + 1, n)]
    random.Random(f"fspo-pairs:{seed}:{qi}").shuffle(cand)
    return cand


def _pair(user: UserProfile, qi: int, q: dict, a: dict, b: dict, i: int, j: int, out, seed: int):
    """A selected pair, its shown order shuffled per user (with the outcome flipped to match)."""
    if random.Random(f"fspo-order:{seed}:{user.user_id}:{qi}:{i}:{j}").random() < 0.5:
        a, b = b, a
        out = replace(out, label=-out.label, p_first=1 - out.p_first) if out else None
    pair = {"user": user.user_id, "qi": qi, "question": q["question"], "first": a["text"], "second": b["text"]}
    return {**pair, "first_resp": a, "second_resp": b}, out


def select_pairs(
    domain: Domain,
    users: list[UserProfile],
    questions: list[dict],
    responses: list[list[dict]],
    seed: int,
    counts: Counter,
) -> tuple[list[dict], list[Outcome | None]]:
    """Per user and question, pairs that differ on an axis the user cares about (decisive ones for attributes).

    ``pair_mode: shared``: candidate pairs are shuffled per question (not per user), so users share
    pairs and the disagreement matrix has common ground. ``pair_mode: matched`` (reviews): the chosen
    side is a response steered to exactly the user's attributes (a variant drawn per user) and the
    other side one steered to another combination, so every chosen answer is what this user wants
    on every axis; a user whose combination has no response to a question falls back to ``shared``.
    Either way the shown order of each pair is shuffled per user.
    """
    pairs: list[dict] = []
    outcomes: list[Outcome | None] = []
    attribute = domain.labeler == "attribute"
    matched = domain.pair_mode == "matched"
    for qi, q in enumerate(questions):
        resp = responses[qi]
        cand: list[tuple[int, int]] | None = None  # the shared shuffled order, built on first use
        by_combo: dict[tuple, list[int]] = {}
        for i, r in enumerate(resp):
            by_combo.setdefault(tuple(r["steer"].get(a) for a in domain.steer_axes), []).append(i)
        for user in users:
            cares = [a for a in domain.steer_axes if a in user.attributes]
            taken = 0
            own = tuple(user.attributes.get(a) for a in domain.steer_axes)
            if matched and by_combo.get(own):
                rng = random.Random(f"fspo-match:{seed}:{user.user_id}:{qi}")
                i = rng.choice(by_combo[own])
                others = sorted(c for c in by_combo if c != own)
                rng.shuffle(others)
                for combo in others:
                    j = rng.choice(by_combo[combo])
                    a, b = resp[i], resp[j]
                    if same_answer(a["text"], b["text"]):
                        continue
                    out = attribute_outcome(user.attributes, a["text"], b["text"]) if attribute else None
                    if out is not None and out.label <= 0:  # the other side differs on no measurable axis
                        counts["pairs_skipped_attribute_tie"] += 1
                        continue
                    pair, out = _pair(user, qi, q, a, b, i, j, out, seed)
                    pairs.append(pair)
                    outcomes.append(out)
                    counts["pairs_matched"] += 1
                    taken += 1
                    if taken >= domain.pairs_per_question:
                        break
            else:
                if matched:
                    counts["pairs_matched_fallback_shared"] += 1
                cand = _shared_order(len(resp), seed, qi) if cand is None else cand
                for i, j in cand:
                    a, b = resp[i], resp[j]
                    if cares and all(a["steer"].get(x) == b["steer"].get(x) for x in cares):
                        continue
                    if same_answer(a["text"], b["text"]):  # a pair validation would refuse
                        continue
                    out = attribute_outcome(user.attributes, a["text"], b["text"]) if attribute else None
                    if out is not None and out.label == 0:
                        counts["pairs_skipped_attribute_tie"] += 1
                        continue
                    pair, out = _pair(user, qi, q, a, b, i, j, out, seed)
                    pairs.append(pair)
                    outcomes.append(out)
                    taken += 1
                    if taken >= domain.pairs_per_question:
                        break
            if taken == 0:
                counts["user_questions_without_pair"] += 1
    counts["pairs_selected"] += len(pairs)
    return pairs, outcomes


def reference_pairs(domain: Domain, responses: list[list[dict]], seed: int, per_question: int = 4) -> list[dict]:
    """Pairs every user labels for the disagreement matrix in ``matched`` mode (users' own pairs differ):
    per question, the first ``per_question`` pairs of the shared shuffled order over each
    combination's first response."""
    refs = []
    for qi, resp in enumerate(responses):
        firsts = {}
        for r in resp:
            firsts.setdefault(tuple(r["steer"].get(a) for a in domain.steer_axes), r)
        rs = list(firsts.values())
        for i, j in _shared_order(len(rs), seed, qi)[:per_question]:
            refs.append(
                {"qi": qi, "first": rs[i]["text"], "second": rs[j]["text"], "first_resp": rs[i], "second_resp": rs[j]}
            )
    return refs


def _entropy_by_user(pairs: list[dict], outcomes: list[Outcome], users: list[str]) -> dict[str, float]:
    by: dict[str, list[float]] = {u: [] for u in users}
    for p, o in zip(pairs, outcomes):
        by[p["user"]].append(o.entropy)
    return {u: round(statistics.fmean(v), 4) if v else 0.0 for u, v in by.items()}


def _winner_labels(
    domain: Domain, pairs, outcomes, users: list[UserProfile], refs: list[dict] | None = None
) -> dict[str, dict[str, str]]:
    """user -> pair key -> winning response id, for the disagreement matrix."""
    labels: dict[str, dict[str, str]] = {u.user_id: {} for u in users}
    keyed = {}
    for p, o in zip(pairs, outcomes):
        key = f"q{p['qi']}:" + "|".join(sorted((p["first_resp"]["id"], p["second_resp"]["id"])))
        keyed[key] = p
        if o.label:
            labels[p["user"]][key] = (p["first_resp"] if o.label > 0 else p["second_resp"])["id"]
    if refs is not None:  # matched pairs are the user's own: compare users on shared reference pairs
        labels = {u.user_id: {} for u in users}
        keyed = {f"q{p['qi']}:{p['first_resp']['id']}|{p['second_resp']['id']}": p for p in refs}
    if domain.labeler == "attribute":  # exact labels are free: label every shared pair for every user
        for u in users:
            for key, p in keyed.items():
                o = attribute_outcome(u.attributes, p["first"], p["second"])
                if o.label:
                    labels[u.user_id][key] = (p["first_resp"] if o.label > 0 else p["second_resp"])["id"]
    return labels


def check_config(cfg: SynthConfig) -> None:
    """Refuse an unusable output folder before any model is loaded or any file written (the
    options' ranges are checked by :class:`SynthConfig` itself)."""
    check_output_folder(cfg.out)


def run_synth(cfg: SynthConfig, llms: list, judge_llm=None) -> dict:
    """Run the pipeline; ``llms`` generate (an ensemble when several), ``judge_llm`` labels (default llms[0]).

    Holds the lock on ``cfg.out`` throughout: a second run on the same folder fails at once instead
    of mixing its files (or its call cache) with this one's.
    """
    check_config(cfg)
    with lock_output(cfg.out):
        return _run_synth(cfg, llms, judge_llm)


def prepare_domain(cfg: SynthConfig, have_llm: bool) -> Domain:
    """The domain with the run's overrides, checked against what the run can do."""
    domain = load_domain(cfg.domain)
    if cfg.labeler:
        domain.labeler = cfg.labeler
    if cfg.responses:
        domain.responses["source"] = cfg.responses
    if domain.response_source == "templates" and not domain.templates:
        raise FspoError(f"{domain.path}: templates: response source 'templates' needs a templates section")
    if domain.labeler == "attribute" and not set(domain.axes) & set(AXES):
        raise FspoError(
            f"{domain.path}: labeler: 'attribute' needs a measurable axis ({', '.join(AXES)}); "
            f"this domain has {', '.join(domain.axes)}"
        )
    needs = _needs_llm(domain, cfg)
    if needs and not have_llm:
        raise FspoError(f"domain {domain.name} needs an LLM ({', '.join(needs)}): pass --backend local|openai|scripted")
    return domain


def open_cache(cfg: SynthConfig) -> CallCache:
    """The run's call cache (emptied first when ``resume`` is off)."""
    cache_path = Path(cfg.out) / CACHE_NAME
    if not cfg.resume and cache_path.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(str(cache_path) + suffix).unlink(missing_ok=True)
    return CallCache(cache_path)


def to_records(
    domain: Domain, pairs: list[dict], outcomes: list[Outcome], judge_name: str, counts: Counter
) -> list[PreferenceRecord]:
    """Orient every decided pair as (chosen, rejected); undecided pairs are dropped and counted."""
    records: list[PreferenceRecord] = []
    for p, o in zip(pairs, outcomes):
        if o.label == 0:
            counts["pairs_dropped_invalid" if not o.valid else "pairs_dropped_inconsistent"] += 1
            continue
        ch, rj = (p["first_resp"], p["second_resp"]) if o.label > 0 else (p["second_resp"], p["first_resp"])
        gens = sorted({ch["generator"], rj["generator"]})
        meta = {
            "domain": domain.name,
            "question_id": f"q{p['qi']:03d}",
            "generator": "+".join(gens),
            "judge": judge_name,
            "consistent": o.consistent,
            "p_chosen": round(o.p_first if o.label > 0 else 1 - o.p_first, 4),
            "chosen_steer": ch["steer"],
            "rejected_steer": rj["steer"],
            "chosen_generator": ch["generator"],
            "rejected_generator": rj["generator"],
            "kind": "style",
        }
        records.append(PreferenceRecord(p["user"], p["question"], ch["text"], rj["text"], "train", meta))
    return records


_NAME_STOP = "a an the of and or to in on at for with by from de la le movie film book novel restaurant product"
_NAME_STOPWORDS = frozenset(_NAME_STOP.split())


def _name_words(text: str) -> set[str]:
    """The words that name an item ("the Blue Harbor seafood grill" -> blue, harbor, seafood, grill),
    singular and without a possessive "'s", as eval's on-topic rule compares them."""
    out = set()
    for w in re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()):
        w = w.removesuffix("'s")
        w = w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        if w not in _NAME_STOPWORDS:
            out.add(w)
    return out


def offtopic_records(
    cfg: SynthConfig,
    records: list[PreferenceRecord],
    questions: list[dict],
    heldout_users: set[str],
    heldout_questions: set[str],
    counts: Counter,
) -> list[PreferenceRecord]:
    """Pairs that make answering the question asked part of what is preferred (``meta.kind: offtopic``).

    For a share ``cfg.offtopic_pairs`` of each training user's training questions (rounded, drawn per
    user), one extra pair: chosen is the user's chosen answer to the question, rejected is the same
    user's chosen answer to another of their training questions, so both sides have the user's
    preferred style and only the topic differs. For item questions ("Write a review of X.") the
    other question is one whose answer contains no word of X's name. Held-out users and held-out
    questions get none: they are for measuring, and shots without style information would dilute
    what the model can read about a new user.
    """
    if cfg.offtopic_pairs <= 0:
        return []
    items = {q["question"]: q.get("item") for q in questions}
    out: list[PreferenceRecord] = []
    for user, mine, prompts, picked, rng in _extra_pair_draws(
        "offtopic", cfg.offtopic_pairs, cfg.seed, records, questions, heldout_users, heldout_questions
    ):
        for prompt in picked:
            rec = mine[prompt]
            name = _name_words(items[prompt]) if items.get(prompt) else set()
            others = [
                o
                for o in prompts
                if o != prompt
                and not same_answer(mine[o].chosen, rec.chosen)
                and not (name & _name_words(mine[o].chosen))
            ]
            if not others:
                counts["offtopic_skipped_no_other_question"] += 1
                continue
            other = mine[rng.choice(others)]
            meta = {
                **rec.meta,
                "generator": "+".join(sorted({rec.meta["chosen_generator"], other.meta["chosen_generator"]})),
                "judge": "topic",
                "consistent": True,
                "p_chosen": 1.0,
                "rejected_steer": other.meta["chosen_steer"],
                "rejected_generator": other.meta["chosen_generator"],
                "kind": "offtopic",
                "rejected_question_id": other.meta["question_id"],
            }
            out.append(PreferenceRecord(user, prompt, rec.chosen, other.chosen, "train", meta))
    counts["pairs_offtopic"] = len(out)
    return out


def _extra_pair_draws(
    kind: str,
    share: float,
    seed: int,
    records: list[PreferenceRecord],
    questions: list[dict],
    heldout_users: set[str],
    heldout_questions: set[str],
):
    """Per training user: (user, their training records by prompt, prompts in question order, the
    drawn share of those prompts, the user's rng). Held-out users and questions are never drawn."""
    qid = {q["question"]: qi for qi, q in enumerate(questions)}
    by_user: dict[str, dict[str, PreferenceRecord]] = {}
    for r in records:
        if r.user_id in heldout_users or r.prompt.strip() in heldout_questions:
            continue
        by_user.setdefault(r.user_id, {}).setdefault(r.prompt, r)
    for user in sorted(by_user):
        mine = by_user[user]
        prompts = sorted(mine, key=lambda p: qid[p])
        rng = random.Random(f"fspo-{kind}:{seed}:{user}")
        picked = sorted(rng.sample(prompts, round(share * len(prompts))), key=lambda p: qid[p])
        yield user, mine, prompts, picked, rng


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_AND_PAIR = re.compile(r"\b([A-Za-z]{3,}) and ([A-Za-z]{3,})\b")


def looped(answer: str, rng: random.Random) -> tuple[str, str] | None:
    """A repetition of the answer and what was repeated: ``word`` (half the time, where the answer
    joins two different words with "and": the first said twice, "dull and dull") or ``sentence``
    (one sentence said again in place of every sentence after it, so the sentence count stays; a
    one-sentence answer is said twice). None when there is nothing to repeat."""
    pairs = [m for m in _AND_PAIR.finditer(answer) if m.group(1).lower() != m.group(2).lower()]
    if pairs and rng.random() < 0.5:
        m = rng.choice(pairs)
        return answer[: m.start(2)] + m.group(1).lower() + answer[m.end(2) :], "word"
    sentences = [x for x in _SENTENCE_END.split(answer.strip()) if x]
    if not sentences:
        return None
    if len(sentences) == 1:
        return f"{sentences[0]} {sentences[0]}", "sentence"
    at = rng.randrange(len(sentences) - 1)
    return " ".join(sentences[: at + 1] + [sentences[at]] * (len(sentences) - 1 - at)), "sentence"


def repetition_records(
    cfg: SynthConfig,
    records: list[PreferenceRecord],
    questions: list[dict],
    heldout_users: set[str],
    heldout_questions: set[str],
    counts: Counter,
) -> list[PreferenceRecord]:
    """Pairs that make a loop dispreferred (``meta.kind: repetition``).

    Small models trained on few-shot episodes tend to end a long answer by repeating a sentence
    ("The Casa Verde is a clear letdown. The Casa Verde is a clear letdown. ..."); nothing in the
    user's pairs says that is worse, because both of a pair's answers are fluent. For a share
    ``cfg.repetition_pairs`` of each training user's training questions, one extra pair: chosen is
    the user's chosen answer, rejected is the same answer with a repetition (:func:`looped`): one
    sentence repeated in place of the sentences after it, or one word of an "A and B" pair said twice
    (the tic the first repetition-pair model showed: "dull and dull"). Both sides share the user's
    style and nearly all words, so the only preference signal is "do not repeat".
    Held-out users and questions get none.
    """
    if cfg.repetition_pairs <= 0:
        return []
    out: list[PreferenceRecord] = []
    for user, mine, _, picked, rng in _extra_pair_draws(
        "repetition", cfg.repetition_pairs, cfg.seed, records, questions, heldout_users, heldout_questions
    ):
        for prompt in picked:
            rec = mine[prompt]
            loop = looped(rec.chosen, rng)
            if loop is None or same_answer(loop[0], rec.chosen):
                counts["repetition_skipped_no_sentence"] += 1
                continue
            meta = {
                **rec.meta,
                "generator": rec.meta["chosen_generator"],
                "judge": "repetition",
                "consistent": True,
                "p_chosen": 1.0,
                "rejected_steer": rec.meta["chosen_steer"],
                "rejected_generator": rec.meta["chosen_generator"],
                "kind": "repetition",
                "repeated": loop[1],
            }
            out.append(PreferenceRecord(user, prompt, rec.chosen, loop[0], "train", meta))
    counts["pairs_repetition"] = len(out)
    return out


def heldout_sets(cfg: SynthConfig, users: list[UserProfile], questions: list[dict]) -> tuple[list[str], set[str]]:
    """(held-out user ids, held-out question texts), with the split functions training and eval use."""
    ids = [u.user_id for u in users]
    _, heldout = split_users(ids, cfg.heldout_users, cfg.seed) if len(ids) > 1 else (ids, [])
    _, heldout_q = split_questions([q["question"] for q in questions], cfg.heldout_questions, cfg.seed)
    return heldout, heldout_q


def split_records(
    cfg: SynthConfig, records: list[PreferenceRecord], users: list[UserProfile], questions: list[dict], counts: Counter
) -> tuple[list[PreferenceRecord], list[UserProfile], list[str]]:
    """Held-out users (whole users) and held-out questions (for every user) marked ``test``, with
    the same split functions training and eval use."""
    ids = [u.user_id for u in users]
    heldout, heldout_q = heldout_sets(cfg, users, questions)
    records = assign_splits(records, heldout, heldout_q)
    users = [replace(u, split="test" if u.user_id in set(heldout) else "train") for u in users]
    counts["prefs_written"] = len(records)
    counts["prefs_train"] = sum(r.split == "train" for r in records)
    counts["prefs_test"] = sum(r.split == "test" for r in records)
    counts["users_without_prefs"] = len(set(ids) - {r.user_id for r in records})
    return records, users, heldout


def _run_synth(cfg: SynthConfig, llms: list, judge_llm=None) -> dict:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    domain = prepare_domain(cfg, bool(llms))
    out = Path(cfg.out)
    cache = open_cache(cfg)
    wrapped = [CachedBackend(b, cache, progress=cfg.progress) for b in llms]
    judge = CachedBackend(judge_llm, cache, progress=cfg.progress) if judge_llm is not None else (wrapped or [None])[0]
    counts: Counter = Counter()
    llm0 = wrapped[0] if wrapped else None

    def stage(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 3)

    s = time.perf_counter()
    users = build_users(domain, cfg.users, cfg.seed, llm=llm0)
    counts["users"] = len(users)
    stage("personas", s)

    s = time.perf_counter()
    questions = build_questions(domain, cfg.questions, cfg.seed, llm=llm0, extra_file=cfg.questions_file)
    counts["questions"] = len(questions)
    stage("questions", s)

    s = time.perf_counter()
    responses = build_responses(domain, questions, cfg.seed, wrapped, counts)
    stage("responses", s)

    s = time.perf_counter()
    pairs, outcomes = select_pairs(domain, users, questions, responses, cfg.seed, counts)
    if domain.labeler == "judge":
        descs = {u.user_id: u.description for u in users}

        def relabel(idx: list[int], descriptions: dict[str, str]) -> list[Outcome]:
            items = [
                (descriptions[pairs[i]["user"]], pairs[i]["question"], pairs[i]["first"], pairs[i]["second"])
                for i in idx
            ]
            return judge_pairs(judge, items, cfg.judge_mode, desc="judge")

        outcomes = relabel(list(range(len(pairs))), descs)
        judge_name = f"{judge.name}:{'logprob' if cfg.judge_mode == 'logprob' or (cfg.judge_mode == 'auto' and judge.can_score_choices) else 'text'}"
    else:
        judge_name = "attribute"
    stage("label", s)
    before = list(outcomes)

    s = time.perf_counter()
    facts: dict[str, list[str]] = {}
    do_refine = cfg.refine if cfg.refine is not None else bool(domain.refine.get("enabled", False))
    if do_refine and domain.labeler == "judge" and pairs:
        descs, outcomes, facts = refine(
            judge,
            descs,
            pairs,
            outcomes,
            relabel,
            int(domain.refine.get("rounds", 1)),
            int(domain.refine.get("max_facts", 2)),
            cfg.seed,
        )
        users = [replace(u, description=descs[u.user_id]) for u in users]
    counts["refine_facts_added"] = sum(len(v) for v in facts.values())
    stage("refine", s)

    records = to_records(domain, pairs, outcomes, judge_name, counts)
    held_u, held_q = heldout_sets(cfg, users, questions)
    extra = offtopic_records(cfg, records, questions, set(held_u), held_q, counts)
    extra += repetition_records(cfg, records, questions, set(held_u), held_q, counts)
    records += extra
    records, users, heldout = split_records(cfg, records, users, questions, counts)
    ids = [u.user_id for u in users]

    s = time.perf_counter()
    judged = len(before)
    oc = {"before": None, "after": None}
    if domain.labeler == "judge" and judged:
        oc = {
            "before": round(sum(o.consistent for o in before) / judged, 4),
            "after": round(sum(o.consistent for o in outcomes) / judged, 4),
        }
    ent_b, ent_a = _entropy_by_user(pairs, before, ids), _entropy_by_user(pairs, outcomes, ids)
    matched_attr = domain.pair_mode == "matched" and domain.labeler == "attribute"
    groups = [
        [r["text"] for r in sorted(resp, key=lambda r: r.get("variant", 0))][:SIMILARITY_MAX_PER_QUESTION]
        for resp in responses
    ]
    sim, sims = diag_mod.similarity_stats(groups) if cfg.embed else ({"mean": None, "median": None, "pairs": 0}, [])
    refs = reference_pairs(domain, responses, cfg.seed) if matched_attr else None
    matrix = diag_mod.disagreement_matrix(_winner_labels(domain, pairs, outcomes, users, refs), ids)
    off = [x for i, row in enumerate(matrix) for j, x in enumerate(row) if i != j and x is not None]
    diag = {
        "domain": domain.name,
        "seed": cfg.seed,
        "labeler": domain.labeler,
        "judge": judge_name,
        "response_source": domain.response_source,
        "users": len(users),
        "heldout_users": len(heldout),
        "questions": len(questions),
        "counts": dict(sorted(counts.items())),
        "similarity": sim,
        "order_consistency": oc,
        "entropy": {
            "before": ent_b,
            "after": ent_a,
            "mean_before": round(statistics.fmean(ent_b.values()), 4),
            "mean_after": round(statistics.fmean(ent_a.values()), 4),
        },
        "disagreement": {"users": ids, "matrix": matrix, "mean": round(statistics.fmean(off), 4) if off else None},
        "refine_facts": facts,
        "diversity": {
            "answers": text_diversity(a for r in records for a in (r.chosen, r.rejected)),
            "style_pairs": text_diversity(
                a for r in records if r.meta.get("kind") == "style" for a in (r.chosen, r.rejected)
            ),
            "responses": text_diversity(r["text"] for resp in responses for r in resp),
        },
    }
    for _ in tqdm(range(1), desc="diagnostics", disable=not cfg.progress):
        diag_mod.write_diagnostics(out / "diagnostics", diag, sims, ids, plots=cfg.plots)
    stage("diagnostics", s)

    if not records:  # diagnostics are written first: they say why
        raise FspoError(
            f"no preference survived labeling: {counts['pairs_selected']} pairs selected, "
            f"{counts['pairs_dropped_inconsistent']} order-inconsistent, {counts['pairs_dropped_invalid']} invalid "
            f"verdicts, {counts['responses_kept']} responses kept of {counts['responses_generated']}; "
            "try more questions, refinement, or a stronger judge"
        )
    write_jsonl(out / "users.jsonl", users)
    write_jsonl(out / "prefs.jsonl", records)
    timings["total"] = round(time.perf_counter() - t0, 3)
    run = {
        "timings_s": timings,
        "cache": {b.name: {"hits": b.hits, "misses": b.misses} for b in {*wrapped, judge} if b},
        "cache_entries": len(cache),
    }
    write_text_atomic(out / "diagnostics" / "run.json", json.dumps(run, indent=2, sort_keys=True) + "\n")
    cache.close()
    return {"diagnostics": diag, "run": run}
