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
from pathlib import Path

from fspo.errors import FspoError
from fspo.eval.config import EvalConfig
from fspo.eval.methods import METHODS, assign_models, layout_warnings, parse_methods


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
    elif spec.startswith(("http://", "https://")):
        from fspo.llm.openai_compat import OpenAIBackend

        url, _, model = spec.partition("#")
        if not model:
            raise FspoError(f"{spec}: name the served model after '#', e.g. http://127.0.0.1:8000/v1#my-model")
        backend = OpenAIBackend(url, model)
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


def run_eval(cfg: EvalConfig, judge_backend=None) -> dict:
    """Run the evaluation described by ``cfg``; write OUT/eval.json, report.md, PNGs; return the result.
    ``judge_backend``: any text backend for the LLM judge (Python API), instead of ``judge_model``."""
    from fspo.data.io import load_data, write_jsonl
    from fspo.eval.generate import ModelPool, generate_method, open_cache, select_episodes
    from fspo.eval.judges import AttributeJudge, Comparison, LLMJudge, verdict_kinds
    from fspo.eval.report import write_report
    from fspo.eval.winrate import Outcome, score_from_preference, summarize

    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    methods = parse_methods(cfg.methods)
    notes: list[str] = []
    if cfg.baseline not in METHODS:
        raise FspoError(f"unknown baseline {cfg.baseline!r}; choose from {', '.join(METHODS)}")
    if cfg.baseline not in methods:
        methods = [cfg.baseline] + methods
        notes.append(f"baseline {cfg.baseline!r} added to the methods")
    from fspo.data.runs import DEFAULT_MAX_LENGTH, DEFAULT_SHOTS, resolve_model

    run_info = resolve_model(cfg.model, must_exist=False) if cfg.model else None
    base_model = cfg.base_model or (run_info.base_model if run_info else None) or "smollm2"
    infos = assign_models(methods, base_model, cfg.model, dict(cfg.method_models))
    notes += layout_warnings(infos)
    shots = cfg.shots if cfg.shots is not None else (run_info.n_shots if run_info and run_info.trained else DEFAULT_SHOTS)
    # One token budget (prompt + answer): a trained row uses its own; untrained rows the trained
    # model's, so every row sees the same shots.
    default_budget = run_info.max_length if run_info and run_info.trained else DEFAULT_MAX_LENGTH
    budgets = {n: cfg.max_length or (i.max_length if i.trained else default_budget) for n, i in infos.items()}
    cfg_dict = cfg.to_dict() | {"methods": methods, "base_model": base_model, "shots": shots}

    data = load_data(cfg.data)
    users, user_notes = _eval_users(cfg, data, infos)
    notes += user_notes
    from fspo.data.splits import evenly_spaced

    all_heldout = list(users)
    users = evenly_spaced(users, cfg.users) if cfg.users else users
    descriptions = {u.user_id: u.description for u in data.users.values() if u.description}
    for name in methods:
        if METHODS[name].prompt_layout.needs_description and any(u not in descriptions for u in users):
            raise FspoError(f"method {name!r} needs user descriptions (users.jsonl) for every evaluated user")
    records = [r for r in data.prefs if r.user_id in set(users)]
    episodes = select_episodes(records, shots, cfg.seed, 0, cfg.queries)
    if not episodes:
        raise FspoError("no evaluation queries (users need at least 2 preferences with distinct questions)")
    _say(cfg, f"eval: {len(users)} held-out users, {len(episodes)} queries, N={shots}, methods: {', '.join(methods)}")

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = open_cache(out)
    pool = ModelPool(seed=cfg.seed)

    # 1. Reward accuracy vs shots.
    reward: dict[str, dict] = {}
    if cfg.reward_accuracy:
        from fspo.eval.generate import heldout_question_records
        from fspo.eval.reward_accuracy import Scorer, reward_accuracy_curve

        t = time.perf_counter()
        splits = {"heldout_users": (records, None)}
        hq = heldout_question_records(data, all_heldout) if cfg.heldout_questions else []
        if hq:
            splits["heldout_questions"] = (hq, "test")
        curve_eps = {
            split: {
                n: select_episodes(rows, n, cfg.seed, cfg.users if split != "heldout_users" else 0, cfg.queries, qs)
                for n in sorted(set(cfg.shots_curve))
            }
            for split, (rows, qs) in splits.items()
        }
        for name in methods:
            info, m = infos[name], METHODS[name]
            scorer = Scorer(
                info.spec,
                info.reference,
                m.layout,
                info.reduction if info.reference else cfg.reward_reduction,
                info.chat_template,
            )
            _say(cfg, f"reward accuracy: {name} ({scorer.metric})")
            try:
                reward[name] = {
                    "splits": {
                        split: reward_accuracy_curve(
                            scorer, eps, pool, cache, budgets[name], descriptions, max(1, cfg.batch_size // 2)
                        )
                        for split, eps in curve_eps.items()
                    }
                }
            except ValueError as exc:
                raise FspoError(f"reward accuracy of {name}: {exc}") from None
            if m.prompt_layout.writes_description:
                notes.append(f"{name}: reward accuracy scores the answer after the gold description (an upper bound)")
        timing["reward_accuracy_s"] = time.perf_counter() - t

    # 2. Generations.
    t = time.perf_counter()
    gens = {}
    method_rows: dict[str, dict] = {}
    for name in methods:
        info = infos[name]
        _say(cfg, f"generate: {name} with {info.spec}")
        g, stats = generate_method(
            name,
            METHODS[name].layout,
            info.spec,
            episodes,
            descriptions,
            pool,
            cache,
            cfg.max_new_tokens,
            budgets[name],
            info.chat_template,
            cfg.batch_size,
            cfg.progress,
        )
        gens[name] = g
        if stats["empty_answers"]:
            notes.append(f"{name}: {stats['empty_answers']}/{len(g)} answers empty after parsing (judged as empty)")
        if stats["echoed_question"]:
            notes.append(f"{name}: {stats['echoed_question']}/{len(g)} answers only repeat the question")
        method_rows[name] = {
            "model": info.spec,
            "reference": info.reference,
            "layout": METHODS[name].layout,
            "n": len(g),
            "generation": stats,
            "attribute_match": _attribute_match(data.users, g),
        }
    timing["generation_s"] = time.perf_counter() - t
    write_jsonl(out / "generations.jsonl", [x.to_dict() for name in methods for x in gens[name]])

    # 3. Judge every method against the baseline on the same queries.
    t = time.perf_counter()
    # 3a. Acceptability of every answer (issue 13, section 1): empty / echo / template leak /
    # degenerate / off-topic, thresholds calibrated on the baseline row and the data's answers to
    # the same questions; both judges gate on it, and each method row gets its `quality`.
    from fspo.eval.acceptability import (
        answer_nll,
        assess_methods,
        embedding_similarity,
        quality_summary,
        sample_answers,
    )

    base_chat = next((infos[m].chat_template for m in methods if infos[m].spec == base_model), False)
    shot_texts = [tuple(x for s in ep.shots for x in (s.chosen, s.rejected)) for ep in episodes]
    flags, calibration, quality_notes = assess_methods(
        {name: [(g.question, g.answer) for g in gens[name]] for name in methods},
        shot_texts,
        cfg.baseline,
        references=[(ep.query.prompt, x) for ep in episodes for x in (ep.query.chosen, ep.query.rejected)],
        nll_fn=lambda pairs: answer_nll(base_model, pairs, pool, cache, base_chat, cfg.batch_size),
        similarity_fn=embedding_similarity,
    )
    notes += quality_notes
    for name in methods:
        method_rows[name]["quality"] = quality_summary(flags[name], sample_answers(gens[name], flags[name]))
    timing["acceptability_s"] = time.perf_counter() - t
    judge = AttributeJudge() if cfg.judge == "attribute" else LLMJudge(_judge_backend(cfg, pool, cache, judge_backend))
    win: dict[str, dict] = {}
    kinds: dict[str, dict] = {}
    comparisons_out = []
    for name in methods:
        if name == cfg.baseline:
            continue
        items = [
            Comparison(
                a.user_id,
                a.question,
                a.answer,
                b.answer,
                descriptions.get(a.user_id, ""),
                data.users[a.user_id].attributes if a.user_id in data.users else {},
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
        comparisons_out += [
            {"method": name, "user_id": it.user_id, "question": it.question, "preference": v.preference, **v.detail}
            for it, v in zip(items, verdicts)
        ]
    timing["judge_s"] = time.perf_counter() - t
    write_jsonl(out / "comparisons.jsonl", comparisons_out)
    if len(users) < 5 and cfg.bootstrap_unit == "user":
        notes.append(f"only {len(users)} users: the user-level bootstrap CI is coarse")

    judge_info: dict = {"name": judge.name, "kinds": {k: v for k, v in kinds.items() if v}}
    judge_info["acceptability"] = calibration.to_dict()
    if cfg.judge == "llm":
        from fspo.llm.pairwise import flatten, judge_messages

        judge_info["prompt_example"] = flatten(judge_messages("<description>", "<question>", "<A>", "<B>", True))
    timing["total_s"] = time.perf_counter() - t0
    result = {
        "config": cfg_dict,
        "users": users,
        "n_queries": len(episodes),
        "methods": method_rows,
        "win_rate": win,
        "judge": judge_info,
        "reward_accuracy": reward,
        "notes": notes,
        "timing": timing,
    }
    files = write_report(result, out)
    cache.close()
    _say(cfg, f"wrote {', '.join(files.values())} ({timing['total_s']:.1f} s)")
    return result
