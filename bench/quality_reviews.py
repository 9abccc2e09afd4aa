"""Quality benchmark: the paper's Reviews table at small scale, on held-out users, on this CPU.

    python bench/quality_reviews.py --out bench-out/quality            # full scale (about 2 h on 2 cores)
    python bench/quality_reviews.py --out bench-out/quality-s --scale small

Builds a reviews-domain dataset with the synth pipeline (users over sentiment x length x
perspective, 8 combinations; held-out users include every user of one combination that training
never sees, plus a random quarter of the rest; held-out questions), trains the paper's rows with fspo (full fine-tune of the
embedded SmolLM2-135M, SFT then IPO, shared-prefix batches), and evaluates them with the attribute
judge: win rate vs base with 95% CIs and reward accuracy. Prints the table and which targets were
met; writes quality.json and quality.md. Every stage caches, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

SCALES = {
    # users, training-data share of random held-out users, questions, sft steps (long: fspo4 and RAT), ipo steps,
    # eval users, eval queries per user. full: 240 users over the 8 combinations (30 each); the whole unseen
    # combination plus 20% of the rest are held out, which leaves about 168 training users (issue 13:
    # at least 150), and 12 held-out users x 4 queries = 48 answers per row.
    "smoke": dict(
        users=16, heldout_users=0.25, questions=10, sft_steps=1, long_sft_steps=2, steps=2, eval_users=2, eval_queries=1
    ),
    "small": dict(
        users=48,
        heldout_users=0.25,
        questions=12,
        sft_steps=4,
        long_sft_steps=10,
        steps=10,
        eval_users=6,
        eval_queries=2,
    ),
    "full": dict(
        users=240,
        heldout_users=0.2,
        questions=24,
        sft_steps=6,
        long_sft_steps=60,
        steps=30,
        eval_users=12,
        eval_queries=4,
    ),
}
HELDOUT_COMBO = {"sentiment": "negative", "length": "verbose", "perspective": "impersonal"}
"""One of the reviews domain's 8 attribute combinations (sentiment x length x perspective), held out
whole: every user with exactly these values is a test user, so training never sees the combination."""
TARGETS = (
    "issue 13, on held-out users of seen combinations: fspo-ipo (4) >= 80% and >= fewshot (4) + 10 points; "
    "8 shots >= 4 shots; rat >= ipo with correct descriptions for >= 80% of users; reward accuracy >= 90%; "
    "every trained row on-topic >= 95%"
)


@dataclass(frozen=True)
class Row:
    name: str  # row label in the table
    method: str  # fspo eval method
    run: str | None  # training run name (None: the base model)
    shots: int


ROWS = [
    Row("base", "base", None, 4),
    Row("fewshot (4)", "fewshot", None, 4),
    Row("fewshot (8)", "fewshot", None, 8),
    Row("prefft", "prefft", "prefft", 4),
    Row("pooled", "pooled", "pooled", 4),
    Row("fspo-ipo (4)", "fspo-ipo", "fspo4-sft60", 4),
    Row("fspo-ipo (8)", "fspo-ipo", "fspo8", 8),
    Row("fspo-rat", "fspo-rat", "rat-sft60", 4),
    Row("oracle", "oracle", None, 4),
]


def combo_user_ids(users, combo: dict[str, str] | None = None) -> set[str]:
    """Users of HELDOUT_COMBO (or ``combo``): all of them are held out, so training never sees that
    combination. Every axis of the combination must be one the users have (a combination over fewer
    axes than the users' would hold out several of their combinations)."""
    combo = HELDOUT_COMBO if combo is None else combo
    users = list(users)
    axes = {k for u in users for k in u.attributes}
    if users and set(combo) != axes:
        raise ValueError(f"held-out combination {combo} must set every user axis: {', '.join(sorted(axes))}")
    return {u.user_id for u in users if all(u.attributes.get(k) == v for k, v in combo.items())}


def build_data(out: Path, scale: dict, seed: int) -> Path:
    """Synthesize users; then hold out every user of HELDOUT_COMBO as well as the synth's random held-out users."""
    from fspo.data.episodes import QUERY_ONLY_KINDS
    from fspo.data.io import load_data, write_jsonl
    from fspo.data.splits import assign_splits
    from fspo.synth.pipeline import SynthConfig, run_synth

    raw = out / "synth"
    run_synth(
        SynthConfig(
            domain="reviews",
            users=scale["users"],
            questions=scale["questions"],
            out=raw,
            seed=seed,
            heldout_users=scale["heldout_users"],
            heldout_questions=0.2,
            embed=False,
        ),
        llms=[],
    )
    data = load_data(raw)
    combo_users = combo_user_ids(data.users.values())
    heldout = combo_users | {u.user_id for u in data.users.values() if u.split == "test"}
    heldout_q = {r.prompt for r in data.prefs if r.split == "test" and r.user_id not in heldout}
    # synth gives query-only pairs (off-topic, repetition) to its training users only; a user held
    # out here keeps only the style pairs, like every other held-out user
    kept = [r for r in data.prefs if not (r.user_id in heldout and r.meta.get("kind") in QUERY_ONLY_KINDS)]
    prefs = assign_splits(kept, heldout, heldout_q)
    users = [replace(u, split="test" if u.user_id in heldout else "train") for u in data.users.values()]
    dest = out / "data"
    write_jsonl(dest / "users.jsonl", users)
    write_jsonl(dest / "prefs.jsonl", prefs)
    print(
        f"data: {len(users)} users ({len(heldout)} held out, {len(combo_users)} of the unseen combination "
        f"{HELDOUT_COMBO}); {len(prefs)} preferences"
    )
    return dest


def run_overrides(data: Path, scale: dict, seed: int, model: str = "smollm2") -> dict[str, dict]:
    """Each trained row's config overrides (bench/lora_vs_full.py reuses the fspo4 recipe)."""
    from fspo.demo import RECIPE

    common = {
        **RECIPE,  # the demo's recipe, chosen by issue 13's sweep on validation users
        "data.path": str(data),
        "model.name": model,
        "eval_every": max(scale["steps"] // 3, 1),
        "save_every": 10,
        "data.eval_episodes": 16,
        "seed": seed,
        "optim.steps": scale["steps"],
        "optim.sft_steps": scale["sft_steps"],
    }
    runs = {
        "prefft": {
            "loss.name": "sft",
            "loss.sft_weight": 0.0,
            "data.shots": 4,
            "data.max_length": 512,
            "optim.lr": 1e-4,
            "optim.steps": scale["sft_steps"] + scale["steps"] // 2,
        },
        "pooled": {"data.layout": "zeroshot", "data.shots": 0, "data.max_length": 256},
        # 60 SFT steps (long_sft_steps) instead of 6: 0% degenerate instead of 16.7%, reward accuracy
        # 91.7% instead of 81.2% (docs/benchmarks.md, 2026-11-30); fspo8 not yet retrained with them
        "fspo4-sft60": {"data.shots": 4, "data.max_length": 512, "optim.sft_steps": scale["long_sft_steps"]},
        "fspo8": {"data.shots": 8, "data.max_length": 1024},
        # RAT: the NLL term covers the whole chosen completion, user description included, at the
        # weight the other rows give the answer (docs/training.md, description_weight); the rejected
        # completion carries the description of a user who prefers the rejected answer, so the
        # preference loss trains the description too (data.rat_contrast); and 60 SFT steps, so the
        # description is learnt before IPO moves it. docs/benchmarks.md has each step's effect
        # (2026-11-30): descriptions at chance, then drifting from the template, then template-exact.
        "rat-sft60": {
            "data.layout": "rat",
            "data.rat_contrast": True,
            "data.shots": 4,
            "data.max_length": 640,
            "loss.sft_weight": 0.0,
            "loss.description_weight": 0.5,
            "optim.sft_steps": scale["long_sft_steps"],
        },
    }
    return {name: {**common, **overrides} for name, overrides in runs.items()}


def train_runs(out: Path, data: Path, scale: dict, seed: int, model: str = "smollm2") -> dict[str, Path]:
    from fspo.config import load_config
    from fspo.train.config import TrainConfig
    from fspo.train.trainer import train

    done = {}
    for name, overrides in run_overrides(data, scale, seed, model).items():
        t = time.perf_counter()
        print(f"\n== train {name}", flush=True)
        cfg = load_config(TrainConfig, None, {**overrides, "out": str(out / "runs" / name)})
        done[name] = train(cfg)
        print(f"== {name}: {time.perf_counter() - t:.0f} s", flush=True)
    return done


def evaluate(
    out: Path, data: Path, runs: dict[str, Path], scale: dict, seed: int, model: str = "smollm2"
) -> dict[str, dict]:
    from fspo.eval.runner import EvalConfig, run_eval

    results = {}
    for shots in (4, 8):
        rows = [r for r in ROWS if r.shots == shots]
        methods = [r.method for r in rows]
        method_models = {r.method: str(runs[r.run]) for r in rows if r.run}
        print(f"\n== eval N={shots}: {', '.join(r.name for r in rows)}", flush=True)
        results[shots] = run_eval(
            EvalConfig(
                data=str(data),
                methods=methods,
                method_models=method_models,
                base_model=model,
                shots=shots,
                shots_curve=[shots],  # reward accuracy at the rows' own N (0/4/8 for every row: too slow here)
                judge="attribute",
                users=scale["eval_users"],
                queries=scale["eval_queries"],
                max_new_tokens=64,
                max_length=1216,
                seed=seed,
                out=str(out / f"eval-{shots}"),
            )
        )
    return results


def unseen_combo_users(data: Path) -> set[str]:
    """Held-out users whose attribute combination training never sees."""
    from fspo.data.io import load_data

    return combo_user_ids(load_data(data).users.values())


def _group_win_rate(per_user: dict[str, dict], members: set[str], inside: bool) -> dict | None:
    """Pooled win rate (wins + ties/2 over n) of the users inside (or outside) ``members``."""
    stats = [s for u, s in per_user.items() if (u in members) == inside]
    n = sum(s["n"] for s in stats)
    if not n:
        return None
    return {"n": n, "users": len(stats), "win_rate": sum(s["win_rate"] * s["n"] for s in stats) / n}


def table(results: dict[int, dict], combo_users: set[str] = frozenset()) -> list[dict]:
    out = []
    for r in ROWS:
        res = results[r.shots]
        wr = res["win_rate"].get(r.method)
        ra = (res.get("reward_accuracy") or {}).get(r.method, {}).get("splits", {})
        point = ra.get("heldout_users", {}).get("points", {}).get(str(r.shots))
        q_point = ra.get("heldout_questions", {}).get("points", {}).get(str(r.shots))
        out.append(
            {
                "row": r.name,
                "n": res["methods"][r.method]["n"],
                "win_rate": wr["win_rate"] if wr else None,
                "ci": wr["ci"] if wr else None,
                "wtl": [wr["wins"], wr["ties"], wr["losses"]] if wr else None,
                "sign_test_p": wr["sign_test_p"] if wr else None,
                "win_rate_unseen_combo": _group_win_rate(wr["per_user"], combo_users, True) if wr else None,
                "win_rate_seen_combos": _group_win_rate(wr["per_user"], combo_users, False) if wr else None,
                "reward_accuracy": point["accuracy"] if point else None,
                "reward_accuracy_heldout_questions": q_point["accuracy"] if q_point else None,
                "metric": ra.get("heldout_users", {}).get("metric"),
                "attribute_match": (res["methods"][r.method].get("attribute_match") or {}).get("all"),
                **{
                    k: (res["methods"][r.method].get("quality") or {}).get(k)
                    for k in ("on_topic", "degenerate", "acceptable", "mean_base_nll", "samples")
                },
                "description_accuracy": (res["methods"][r.method].get("description_accuracy") or {}).get("users"),
                "trained": r.run is not None,
            }
        )
    return out


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _group_cell(g: dict | None) -> str:
    return "–" if g is None else f"{_pct(g['win_rate'])} (n={g['n']})"


def render(rows: list[dict]) -> str:
    lines = [
        "| row | n | win rate vs base [95% CI] | W / T / L | sign-test p | win rate: unseen combo / seen combos "
        "| reward acc. (held-out users) | reward acc. (held-out questions) | attribute match "
        "| on-topic | degenerate | acceptable | mean base NLL | correct descriptions |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = r["win_rate"] is None
        wr = "(baseline)" if base else f"{_pct(r['win_rate'])} [{100 * r['ci'][0]:.0f}, {100 * r['ci'][1]:.0f}]"
        wtl = "" if base else " / ".join(str(x) for x in r["wtl"])
        p = "" if base else f"{r['sign_test_p']:.2g}"
        groups = (
            "" if base else " / ".join(_group_cell(r[k]) for k in ("win_rate_unseen_combo", "win_rate_seen_combos"))
        )
        kind = {"implicit_reward": " (h>0)", "loglik": " (LL)"}.get(r["metric"] or "", "")
        lines.append(
            f"| {r['row']} | {r['n']} | {wr} | {wtl} | {p} | {groups} | {_pct(r['reward_accuracy'])}{kind} | "
            f"{_pct(r['reward_accuracy_heldout_questions'])} | {_pct(r['attribute_match'])} | "
            f"{_pct(r.get('on_topic'))} | {_pct(r.get('degenerate'))} | {_pct(r.get('acceptable'))} | "
            f"{'–' if r.get('mean_base_nll') is None else format(r['mean_base_nll'], '.2f')} | "
            f"{_pct(r.get('description_accuracy'))} |"
        )
    return "\n".join(lines)


def render_samples(rows: list[dict]) -> str:
    """Three answers per row, the same queries for every row (read them: a judge's number is not enough)."""
    lines = []
    for r in rows:
        lines.append(f"**{r['row']}**")
        for x in r.get("samples") or []:
            answer = " ".join(x["answer"].split())
            flags = f" _(flags: {', '.join(x['flags'])})_" if x.get("flags") else ""
            lines.append(f"- {x['user_id']}: {x['question']} → {answer}{flags}")
        lines.append("")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """Issue 13's targets, on held-out users of seen combinations where the table splits them."""
    by = {r["row"]: r for r in rows}

    def seen(name: str) -> float:
        g = by[name]["win_rate_seen_combos"]
        return g["win_rate"] if g else 0.0

    ipo4, ipo8, rat = seen("fspo-ipo (4)"), seen("fspo-ipo (8)"), seen("fspo-rat")
    described = by["fspo-rat"].get("description_accuracy") or 0.0
    reward = by["fspo-ipo (4)"]["reward_accuracy"] or 0.0
    off = [r["row"] for r in rows if r.get("trained") and (r.get("on_topic") or 0.0) < 0.95]
    checks = [
        (f"fspo-ipo (4) win rate vs base >= 80% (seen combos: {_pct(ipo4)})", ipo4 >= 0.8),
        (
            f"fspo-ipo (4) >= fewshot (4) + 10 points (seen combos: {_pct(ipo4)} vs {_pct(seen('fewshot (4)'))})",
            ipo4 >= seen("fewshot (4)") + 0.1,
        ),
        (f"8 shots >= 4 shots (fspo-ipo, seen combos: {_pct(ipo8)} vs {_pct(ipo4)})", ipo8 >= ipo4),
        (f"fspo-rat >= fspo-ipo (4) (seen combos: {_pct(rat)} vs {_pct(ipo4)})", rat >= ipo4),
        (f"fspo-rat correct descriptions >= 80% of users ({_pct(described)})", described >= 0.8),
        (f"fspo-ipo (4) reward accuracy on held-out users >= 90% ({_pct(reward)})", reward >= 0.9),
        (f"every trained row on-topic >= 95% (below: {', '.join(off) or 'none'})", not off),
    ]
    return [f"- [{'x' if ok else ' '}] {name}: {'met' if ok else 'MISSED'}" for name, ok in checks]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/quality")
    ap.add_argument("--scale", choices=list(SCALES), default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2", help="smollm2 (the benchmark) | tiny (a smoke test of the script)")
    args = ap.parse_args(argv)
    out, scale = Path(args.out), SCALES[args.scale]
    t0 = time.perf_counter()
    data = build_data(out, scale, args.seed)
    runs = train_runs(out, data, scale, args.seed, args.model)
    results = evaluate(out, data, runs, scale, args.seed, args.model)
    rows = table(results, unseen_combo_users(data))
    minutes = (time.perf_counter() - t0) / 60
    md = "\n".join(
        [
            f"`python bench/quality_reviews.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
            f"on {time.strftime('%Y-%m-%d')}: scale `{args.scale}` ({scale}); wall time {minutes:.0f} min "
            "(a rerun resumes from every stage's cache, so only a first run's time is the cost).",
            "",
            render(rows),
            "",
            f"Targets ({TARGETS}):",
            *targets(rows),
            "",
            "Sample answers (three per row, the same queries for every row):",
            "",
            render_samples(rows),
        ]
    )
    (out / "quality.md").write_text(md)
    (out / "quality.json").write_text(json.dumps({"scale": args.scale, "minutes": minutes, "rows": rows}, indent=2))
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
