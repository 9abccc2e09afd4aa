"""``run_eval``: reward accuracy vs shots, generations per method, judged win rates, report.

The Python API the CLI and the demo share::

    from fspo.eval.runner import EvalConfig, run_eval
    result = run_eval(EvalConfig(data="examples/reviews", methods=["base", "fewshot", "fspo-ipo"],
                                 model="runs/x", judge="attribute", users=4, queries=4, out="eval/"))

Everything is seeded (episodes, bootstrap), greedy decoding is deterministic, and every model
call is cached in ``OUT/cache.sqlite``: a rerun with the same settings replays, a killed run resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fspo.errors import FspoError
from fspo.eval.config import EvalConfig
from fspo.eval.methods import METHODS, assign_models, layout_warnings, parse_methods
from fspo.llm.endpoints import is_endpoint


def _say(cfg: EvalConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, flush=True)


def _judge_backend(cfg: EvalConfig, pool, cache, backend=None):
    from fspo.llm.cache import CachedBackend

    if backend is not None:
        return CachedBackend(backend, cache, progress=cfg.progress)
    spec = cfg.judge_model
    if not spec:
        raise FspoError("--judge llm needs --judge-model (scripted | smollm2 | DIR | http://host:port/v1#model)")
    if spec == "scripted":
        from fspo.llm.scripted import ScriptedBackend

        backend = ScriptedBackend()
    elif is_endpoint(spec):
        from fspo.llm.openai_compat import OpenAIBackend

        backend = OpenAIBackend.from_endpoint(spec, "--judge_model")
    else:
        from fspo.eval.generate import LazyLocalBackend

        backend = LazyLocalBackend(pool, spec, cfg.batch_size)
    return CachedBackend(backend, cache, progress=cfg.progress)


def _eval_users(cfg: EvalConfig, data, infos) -> tuple[list[str], list[str]]:
    from fspo.data.splits import heldout_user_ids

    _, held = heldout_user_ids(data, 0.0, cfg.seed)
    candidates = set(held)
    notes = []
    for name, info in infos.items():
        if METHODS[name].trained and info.heldout_users is not None:
            candidates |= set(info.heldout_users) & {r.user_id for r in data.prefs}
    for name, info in infos.items():
        if info.heldout_users is not None:
            dropped = candidates - set(info.heldout_users)
            if dropped:
                notes.append(f"{len(dropped)} users dropped: the model of {name!r} trained on them")
            candidates &= set(info.heldout_users)
        chosen_on = candidates & set(info.selected_on)
        if chosen_on:  # fspo select picked this checkpoint on them: a score there would be biased
            notes.append(f"{len(chosen_on)} users dropped: the checkpoint of {name!r} was selected on them")
            candidates -= chosen_on
    if not candidates:
        raise FspoError(
            f"{data.source}: no held-out users to evaluate (mark users split=test, or train with data.heldout_users)"
        )
    return sorted(candidates), notes


def _attribute_match(users: dict, gens) -> dict | None:
    from fspo.data.attributes import AXES, matches

    per_axis: dict[str, list[bool]] = {}
    all_ok = []
    for g in gens:
        attrs = users[g.user_id].attributes if g.user_id in users else {}
        m = matches(attrs, g.answer)
        if not m or not any(a in AXES for a in attrs):
            return None
        for axis, ok in m.items():
            per_axis.setdefault(axis, []).append(ok)
        all_ok.append(all(m.values()))
    if not all_ok:
        return None
    return {"all": sum(all_ok) / len(all_ok), "axes": {a: sum(v) / len(v) for a, v in per_axis.items()}}


@dataclass
class EvalPlan:
    """What every stage evaluates: the method rows and their models, the held-out users and the
    query episodes (the same queries and shots for every row)."""

    methods: list[str]
    infos: dict  # method -> ResolvedModel
    budgets: dict[str, int]  # method -> tokens per sequence, prompt + answer
    base_model: str
    shots: int
    data: Any  # PreferenceData
    users: list[str]  # evaluated held-out users
    all_heldout: list[str]  # every held-out user (held-out questions exclude them all)
    records: list  # the evaluated users' rows
    descriptions: dict[str, str]
    episodes: list  # one per query
    notes: list[str] = field(default_factory=list)
    engines: dict[str, tuple[str, str]] = field(default_factory=dict)  # method -> (URL[#model], option)

    def config_dict(self, cfg: EvalConfig) -> dict:
        return cfg.to_dict() | {"methods": self.methods, "base_model": self.base_model, "shots": self.shots}


def plan_eval(cfg: EvalConfig) -> EvalPlan:
    """Resolve methods, models, token budgets, held-out users and query episodes; check them all
    before any model is loaded."""
    from fspo.data.io import load_data
    from fspo.data.runs import DEFAULT_MAX_LENGTH, DEFAULT_SHOTS, resolve_model
    from fspo.data.splits import evenly_spaced
    from fspo.eval.generate import select_episodes

    methods = parse_methods(cfg.methods)
    notes: list[str] = []
    if cfg.baseline not in methods:
        methods = [cfg.baseline] + methods
        notes.append(f"baseline {cfg.baseline!r} added to the methods")
    run_info = resolve_model(cfg.model, must_exist=False) if cfg.model else None
    base_model = cfg.base_model or (run_info.base_model if run_info else None) or "smollm2"
    infos = assign_models(methods, base_model, cfg.model, dict(cfg.method_models))
    notes += layout_warnings(infos)
    trained = run_info is not None and run_info.trained
    shots = cfg.shots if cfg.shots is not None else (run_info.n_shots if trained else DEFAULT_SHOTS)
    # One token budget (prompt + answer): a trained row uses its own; untrained rows the trained
    # model's, so every row sees the same shots.
    default_budget = run_info.max_length if trained else DEFAULT_MAX_LENGTH
    budgets = {n: cfg.max_length or (i.max_length if i.trained else default_budget) for n, i in infos.items()}

    data = load_data(cfg.data)
    all_heldout, user_notes = _eval_users(cfg, data, infos)
    notes += user_notes
    users = evenly_spaced(all_heldout, cfg.users) if cfg.users else list(all_heldout)
    descriptions = {u.user_id: u.description for u in data.users.values() if u.description}
    for name in methods:
        if METHODS[name].prompt_layout.needs_description and any(u not in descriptions for u in users):
            raise FspoError(f"method {name!r} needs user descriptions (users.jsonl) for every evaluated user")
    records = [r for r in data.prefs if r.user_id in set(users)]
    episodes = select_episodes(records, shots, cfg.seed, 0, cfg.queries)
    if not episodes:
        raise FspoError("no evaluation queries (users need at least 2 preferences with distinct questions)")
    plan = EvalPlan(
        methods, infos, budgets, base_model, shots, data, users, all_heldout, records, descriptions, episodes, notes
    )
    plan.engines = method_engines(cfg, methods, notes)
    return plan


def method_engines(cfg: EvalConfig, methods: list[str], notes: list[str]) -> dict[str, tuple[str, str]]:
    """Rows whose answers an engine generates: ``--method-engines NAME=URL`` first, then ``--engine``
    for every row that runs ``--model`` (trained rows without their own ``--method-model``)."""
    engines = {n: (url, f"--method_engines {n}") for n, url in cfg.method_engines.items()}
    if cfg.engine:
        runs_model = [n for n in methods if METHODS[n].trained and n not in cfg.method_models]
        if not [n for n in runs_model if n not in engines]:
            raise FspoError("--engine: serves --model, but no method row runs it (use --method-engines NAME=URL)")
        engines = {n: (cfg.engine, "--engine") for n in runs_model} | engines
    for name, (url, _) in engines.items():
        how = "locally" if cfg.reward_accuracy else "not at all (--reward-accuracy false)"
        notes.append(f"{name}: answers generated through {url}; reward accuracy scored {how}")
    return engines


def shared_rows(cfg: EvalConfig, plan: EvalPlan, pool) -> list:
    """The rows whose answers a local model generates (not an engine), for the eval lanes."""
    from fspo.eval.generate import generation_prompts
    from fspo.eval.lanes import SharedRow

    rows = []
    for name in plan.methods:
        if name in plan.engines:
            continue
        info = plan.infos[name]
        prompts, _ = generation_prompts(
            METHODS[name].layout,
            info.spec,
            plan.episodes,
            plan.descriptions,
            pool,
            new_tokens(cfg, name),
            plan.budgets[name],
            info.chat_template,
        )
        rows.append(SharedRow(name, info.spec, prompts, new_tokens(cfg, name), cfg.batch_size))
    return rows


def new_tokens(cfg: EvalConfig, method: str) -> int:
    """Tokens a row may generate: a row that writes a user description first (RAT) gets
    ``description_tokens`` more, so its answer has the same room as every other row's (with 64 in
    all, half of a RAT model's answers on the quality benchmark were cut off mid-sentence)."""
    extra = cfg.description_tokens if METHODS[method].prompt_layout.writes_description else 0
    return cfg.max_new_tokens + extra


def score_reward_accuracy(cfg: EvalConfig, plan: EvalPlan, pool, cache) -> dict[str, dict]:
    """Stage 1: reward accuracy vs shots of every row, on held-out users and on held-out questions
    of training users."""
    from fspo.eval.generate import heldout_question_records, select_episodes
    from fspo.eval.reward_accuracy import Scorer, reward_accuracy_curve

    splits = {"heldout_users": (plan.records, None)}
    hq = heldout_question_records(plan.data, plan.all_heldout) if cfg.heldout_questions else []
    if hq:
        splits["heldout_questions"] = (hq, "test")
    curve_eps = {
        split: {
            n: select_episodes(rows, n, cfg.seed, cfg.users if split != "heldout_users" else 0, cfg.queries, qs)
            for n in sorted(set(cfg.shots_curve))
        }
        for split, (rows, qs) in splits.items()
    }
    reward: dict[str, dict] = {}
    for name in plan.methods:
        info, m = plan.infos[name], METHODS[name]
        reduction = info.reduction if info.reference else cfg.reward_reduction
        scorer = Scorer(info.spec, info.reference, m.layout, reduction, info.chat_template)
        _say(cfg, f"reward accuracy: {name} ({scorer.metric})")
        try:
            reward[name] = {
                "splits": {
                    split: reward_accuracy_curve(
                        scorer, eps, pool, cache, plan.budgets[name], plan.descriptions, max(1, cfg.batch_size // 2)
                    )
                    for split, eps in curve_eps.items()
                }
            }
        except ValueError as exc:
            raise FspoError(f"reward accuracy of {name}: {exc}") from None
        if m.prompt_layout.writes_description:
            plan.notes.append(f"{name}: reward accuracy scores the answer after the gold description (an upper bound)")
    return reward


def generate_answers(
    cfg: EvalConfig, plan: EvalPlan, pool, cache, shares: dict | None = None
) -> tuple[dict[str, list], dict[str, dict]]:
    """Stage 2: every row's greedy answers to the same queries; (generations, method rows).
    ``shares``: per method, the chunks a helping eval lane may compute (:mod:`fspo.eval.lanes`)."""
    from fspo.eval.descriptions import description_accuracy
    from fspo.eval.generate import generate_method

    gens: dict[str, list] = {}
    method_rows: dict[str, dict] = {}
    for name in plan.methods:
        info = plan.infos[name]
        engine, option = plan.engines.get(name, (None, "--engine"))
        _say(cfg, f"generate: {name} with {info.spec}" + (f" through {engine}" if engine else ""))
        g, stats = generate_method(
            name,
            METHODS[name].layout,
            info.spec,
            plan.episodes,
            plan.descriptions,
            pool,
            cache,
            new_tokens(cfg, name),
            plan.budgets[name],
            info.chat_template,
            cfg.batch_size,
            cfg.progress,
            engine=engine,
            option=option,
            share=(shares or {}).get(name),
        )
        gens[name] = g
        if stats["empty_answers"]:
            plan.notes.append(
                f"{name}: {stats['empty_answers']}/{len(g)} answers empty after parsing (judged as empty)"
            )
        if stats["echoed_question"]:
            plan.notes.append(f"{name}: {stats['echoed_question']}/{len(g)} answers only repeat the question")
        method_rows[name] = {
            "model": info.spec,
            "reference": info.reference,
            "layout": METHODS[name].layout,
            "n": len(g),
            "generation": stats,
            "attribute_match": _attribute_match(plan.data.users, g),
        }
        if engine:
            method_rows[name]["engine"] = engine
        if METHODS[name].prompt_layout.writes_description:
            # RAT: does the description it wrote state the user's true attributes? (issue 13)
            method_rows[name]["description_accuracy"] = description_accuracy(
                [(x.user_id, x.description) for x in g], plan.data.users
            )
    return gens, method_rows


def assess_answers(cfg: EvalConfig, plan: EvalPlan, gens: dict[str, list], method_rows: dict[str, dict], pool, cache):
    """Stage 3: acceptability of every answer (empty / echo / template leak / degenerate / off-topic;
    issue 13), thresholds calibrated on the baseline row and the data's answers to the same
    questions; both judges gate on it, and each method row gets its ``quality`` with samples."""
    from fspo.eval.acceptability import (
        answer_nll,
        assess_methods,
        embedding_similarity,
        quality_summary,
        sample_answers,
    )

    infos = plan.infos
    base_chat = next((infos[m].chat_template for m in plan.methods if infos[m].spec == plan.base_model), False)
    shot_texts = [tuple(x for s in ep.shots for x in (s.chosen, s.rejected)) for ep in plan.episodes]
    flags, calibration, quality_notes = assess_methods(
        {name: [(g.question, g.answer) for g in gens[name]] for name in plan.methods},
        shot_texts,
        cfg.baseline,
        references=[(ep.query.prompt, x) for ep in plan.episodes for x in (ep.query.chosen, ep.query.rejected)],
        nll_fn=lambda pairs: answer_nll(plan.base_model, pairs, pool, cache, base_chat, cfg.batch_size),
        similarity_fn=embedding_similarity,
    )
    plan.notes.extend(quality_notes)
    for name in plan.methods:
        method_rows[name]["quality"] = quality_summary(flags[name], sample_answers(gens[name], flags[name]))
    return flags, calibration, shot_texts


def judge_against_baseline(cfg: EvalConfig, plan: EvalPlan, gens, flags, shot_texts, judge):
    """Stage 4: every row against the baseline on the same queries; (win rates, verdict kinds,
    one comparison row per query)."""
    from fspo.eval.judges import Comparison, verdict_kinds
    from fspo.eval.winrate import Outcome, score_from_preference, summarize

    users = plan.data.users
    win: dict[str, dict] = {}
    kinds: dict[str, dict] = {}
    comparisons: list[dict] = []
    for name in plan.methods:
        if name == cfg.baseline:
            continue
        items = [
            Comparison(
                a.user_id,
                a.question,
                a.answer,
                b.answer,
                plan.descriptions.get(a.user_id, ""),
                users[a.user_id].attributes if a.user_id in users else {},
                flags[name][i],
                flags[cfg.baseline][i],
                shot_texts[i],
            )
            for i, (a, b) in enumerate(zip(gens[name], gens[cfg.baseline]))
        ]
        verdicts = judge.judge(items)
        outcomes = [
            Outcome(it.user_id, score_from_preference(v.preference), v.flipped) for it, v in zip(items, verdicts)
        ]
        win[name] = summarize(outcomes, cfg.n_boot, cfg.seed, cfg.ci_level, cfg.bootstrap_unit)
        kinds[name] = verdict_kinds(verdicts)
        comparisons += [
            {"method": name, "user_id": it.user_id, "question": it.question, "preference": v.preference, **v.detail}
            for it, v in zip(items, verdicts)
        ]
    return win, kinds, comparisons


def run_eval(cfg: EvalConfig, judge_backend=None) -> dict:
    """Run the evaluation described by ``cfg``; write OUT/eval.json, report.md, PNGs; return the result.
    ``judge_backend``: any text backend for the LLM judge (Python API), instead of ``judge_model``.
    Holds the lock on ``cfg.out``: a second eval into the same folder fails at once."""
    from fspo.data.io import lock_output

    plan = plan_eval(cfg)
    with lock_output(cfg.out):
        return _run_stages(cfg, plan, judge_backend)


def _run_stages(cfg: EvalConfig, plan: EvalPlan, judge_backend) -> dict:
    from fspo.data.io import write_jsonl
    from fspo.eval.generate import ModelPool, open_cache
    from fspo.eval.judges import AttributeJudge, LLMJudge
    from fspo.eval.lanes import help_generate, lanes_enabled, owner_snapshots, side_by_side
    from fspo.eval.report import write_report

    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    _say(
        cfg,
        f"eval: {len(plan.users)} held-out users, {len(plan.episodes)} queries, N={plan.shots}, "
        f"methods: {', '.join(plan.methods)}",
    )
    out = Path(cfg.out)
    cache = open_cache(out)
    pool = ModelPool(dtype=cfg.dtype, seed=cfg.seed, device=cfg.device)

    reward: dict[str, dict] = {}
    rows = shared_rows(cfg, plan, pool) if lanes_enabled(cfg.device) else []
    if rows:
        # Lanes (fspo.eval.lanes): A scores, then helps B generate; each lane has its own models,
        # tokenizers and notes (merged in the sequential order).
        known = owner_snapshots(rows, pool, cache)
        scoring, answering = replace(plan, notes=[]), replace(plan, notes=[])
        lane_pool = ModelPool(dtype=cfg.dtype, seed=cfg.seed, device=cfg.device)
        shares = {row.method: row.share for row in rows}
        _say(cfg, "generate: beside reward accuracy, helped by it once done (two lanes)")

        def lane_a() -> dict[str, dict]:
            t = time.perf_counter()
            got = score_reward_accuracy(cfg, scoring, pool, cache) if cfg.reward_accuracy else {}
            timing["reward_accuracy_s"] = time.perf_counter() - t
            help_generate(rows, known, pool, cache)
            return got

        def lane_b() -> tuple[dict[str, list], dict[str, dict]]:
            t = time.perf_counter()
            got = generate_answers(cfg, answering, lane_pool, cache, shares)
            timing["generation_s"] = time.perf_counter() - t
            return got

        t = time.perf_counter()
        reward, (gens, method_rows) = side_by_side([lane_a, lane_b], parallel=True)
        timing["lanes_s"] = time.perf_counter() - t
        plan.notes += scoring.notes + answering.notes
    else:
        if cfg.reward_accuracy:
            t = time.perf_counter()
            reward = score_reward_accuracy(cfg, plan, pool, cache)
            timing["reward_accuracy_s"] = time.perf_counter() - t
        t = time.perf_counter()
        gens, method_rows = generate_answers(cfg, plan, pool, cache)
        timing["generation_s"] = time.perf_counter() - t
    write_jsonl(out / "generations.jsonl", [x.to_dict() for name in plan.methods for x in gens[name]])

    t = time.perf_counter()
    flags, calibration, shot_texts = assess_answers(cfg, plan, gens, method_rows, pool, cache)
    timing["acceptability_s"] = time.perf_counter() - t

    t = time.perf_counter()
    judge = AttributeJudge() if cfg.judge == "attribute" else LLMJudge(_judge_backend(cfg, pool, cache, judge_backend))
    win, kinds, comparisons = judge_against_baseline(cfg, plan, gens, flags, shot_texts, judge)
    timing["judge_s"] = time.perf_counter() - t
    write_jsonl(out / "comparisons.jsonl", comparisons)

    from fspo.eval.voice import voice_scores  # voice: answers vs the person's own (held-out) text

    t = time.perf_counter()
    voice = voice_scores(plan.episodes, gens, cfg.baseline, min(cfg.n_boot, 1000), cfg.seed, cfg.ci_level)
    timing["voice_s"] = time.perf_counter() - t
    if voice is None:
        plan.notes.append("voice score left out: the MiniLM model could not be loaded")
    if len(plan.users) < 5 and cfg.bootstrap_unit == "user":
        plan.notes.append(f"only {len(plan.users)} users: the user-level bootstrap CI is coarse")

    judge_info: dict = {"name": judge.name, "kinds": {k: v for k, v in kinds.items() if v}}
    judge_info["acceptability"] = calibration.to_dict()
    if cfg.judge == "llm":
        from fspo.llm.pairwise import flatten, judge_messages

        judge_info["prompt_example"] = flatten(judge_messages("<description>", "<question>", "<A>", "<B>", True))
    timing["total_s"] = time.perf_counter() - t0
    result = {
        "config": plan.config_dict(cfg),
        "users": plan.users,
        "n_queries": len(plan.episodes),
        "methods": method_rows,
        "win_rate": win,
        "judge": judge_info,
        "reward_accuracy": reward,
        "voice": voice,
        "notes": plan.notes,
        "timing": timing,
    }
    files = write_report(result, out)
    cache.close()
    _say(cfg, f"wrote {', '.join(files.values())} ({timing['total_s']:.1f} s)")
    return result
