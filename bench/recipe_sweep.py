"""Recipe sweep for the preference stage (issue 13, section 2): which IPO recipe keeps answers
fluent and on topic while it personalizes?

One shared SFT model, several IPO recipes started from it, each judged by the acceptability-gated
attribute judge on a **validation split of users**: training users of the demo-scale data that the
sweep holds out. The data's test users (the ones the demo and the benchmarks evaluate on) are
dropped from the sweep's data altogether, so choosing a recipe never looks at them.

    python bench/recipe_sweep.py --out bench-out/recipe-sweep                 # the default recipes
    python bench/recipe_sweep.py --out bench-out/recipe-sweep --recipes demo,nll1
    python bench/recipe_sweep.py --model tiny --steps-scale 0.05 --out /tmp/rs   # smoke test

Stages, each resumed when rerun (a finished recipe is read back from its ``result.json``):
1. data: ``fspo synth --domain reviews --backend none --users 32 --questions 12`` into OUT/data
   (the demo's data), then OUT/val-data: the test users removed, ``--val-users`` training users
   (evenly spread over the sorted ids) marked ``split: test`` with their off-topic pairs removed
   (test users have none), the rest training users.
2. SFT once (the demo's SFT stage: 6 steps, lr 1e-4, 4 shots, shared prefix) into OUT/sft.
3. Per recipe: ``--loss ipo`` from OUT/sft (the SFT model is the start and the frozen reference,
   exactly as in a two-stage ``sft+ipo`` run) into OUT/recipes/NAME, then ``run_eval`` on the
   validation users (base and fspo-ipo, attribute judge, 8 users x 3 queries, shots curve [0, 4],
   64 new tokens) into OUT/recipes/NAME/eval. The base model's answers are the same for every
   recipe, so a recipe's eval starts from a copy of the previous eval's cache.
4. A table (printed, and OUT/table.md) and OUT/sweep.json with each recipe's samples.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fspo.data.io import write_text_atomic

# name: (sft_weight, lr, beta, steps). "demo" is the demo's recipe before issue 13.
RECIPES: dict[str, tuple[float, float, float, int]] = {
    "demo": (0.0, 1e-4, 0.1, 60),
    "nll1": (1.0, 1e-4, 0.1, 60),
    "nll1-b0.5": (1.0, 1e-4, 0.5, 60),
    "nll0.5-b0.5-lr5e-5-s30": (0.5, 5e-5, 0.5, 30),
    "nll1-b0.5-s30": (1.0, 1e-4, 0.5, 30),
    "nll0-b0.5-lr5e-5-s30": (0.0, 5e-5, 0.5, 30),
    "nll0.5-b0.5-lr5e-5": (0.5, 5e-5, 0.5, 60),
}
DEFAULT_RECIPES = ["demo", "nll1-b0.5-s30", "nll0.5-b0.5-lr5e-5-s30", "nll0.5-b0.5-lr5e-5"]


@dataclass
class Recipe:
    name: str
    sft_weight: float
    lr: float
    beta: float
    steps: int


def make_data(out: Path, users: int, questions: int, val_users: int, seed: int) -> Path:
    data = out / "data"
    if not (data / "prefs.jsonl").exists():
        cmd = [sys.executable, "-m", "fspo.cli", "synth", "--domain", "reviews", "--backend", "none"]
        cmd += ["--users", str(users), "--questions", str(questions), "--seed", str(seed), "--out", str(data)]
        cmd += ["--no-embed", "--no-plots", "--quiet"]
        subprocess.run(cmd, check=True)
    val = out / "val-data"
    if (val / "prefs.jsonl").exists():
        return val
    users_rows = [json.loads(x) for x in (data / "users.jsonl").read_text().splitlines() if x.strip()]
    prefs = [json.loads(x) for x in (data / "prefs.jsonl").read_text().splitlines() if x.strip()]
    test = {u["user_id"] for u in users_rows if u.get("split") == "test"}
    test |= {p["user_id"] for p in prefs if p.get("split") == "test"} - {
        p["user_id"] for p in prefs if p.get("split") != "test"
    }
    train_ids = sorted({p["user_id"] for p in prefs} - test)
    step = len(train_ids) / val_users
    chosen = {train_ids[int(i * step)] for i in range(val_users)}
    new_users, new_prefs = [], []
    for u in users_rows:
        if u["user_id"] in test:
            continue
        new_users.append(u | {"split": "test" if u["user_id"] in chosen else "train"})
    for p in prefs:
        if p["user_id"] in test:
            continue
        if p["user_id"] in chosen:
            if (p.get("meta") or {}).get("kind") == "offtopic":
                continue
            p = p | {"split": "test"}
        new_prefs.append(p)
    val.mkdir(parents=True, exist_ok=True)
    write_text_atomic(val / "users.jsonl", "".join(json.dumps(u) + "\n" for u in new_users))
    write_text_atomic(val / "prefs.jsonl", "".join(json.dumps(p) + "\n" for p in new_prefs))
    write_text_atomic(
        val / "split.json",
        json.dumps({"validation_users": sorted(chosen), "dropped_test_users": sorted(test)}, indent=2),
    )
    return val


def base_overrides(val: Path, model: str, seed: int) -> dict:
    return {
        "data.path": str(val),
        "data.shots": 4,
        "data.max_length": 512,
        "data.eval_episodes": 16,
        "model.name": model,
        "loss.reduction": "mean",
        "optim.batch_size": 2,
        "optim.shared_prefix": True,
        "seed": seed,
        "save_every": 10,
        "progress": False,
    }


def train_sft(out: Path, val: Path, model: str, seed: int, steps: int) -> Path:
    from fspo.config import load_config
    from fspo.train.config import TrainConfig
    from fspo.train.trainer import train

    cfg = load_config(
        TrainConfig,
        None,
        base_overrides(val, model, seed)
        | {"loss.name": "sft", "optim.steps": steps, "optim.lr": 1e-4, "eval_every": steps, "out": str(out / "sft")},
    )
    return train(cfg)


def run_recipe(out: Path, val: Path, sft: Path, model: str, r: Recipe, seed: int, eval_kw: dict) -> dict:
    from fspo.config import load_config
    from fspo.eval.runner import EvalConfig, run_eval
    from fspo.train.config import TrainConfig
    from fspo.train.trainer import train

    rdir = out / "recipes" / r.name
    done = rdir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    t = time.perf_counter()
    cfg = load_config(
        TrainConfig,
        None,
        base_overrides(val, str(sft), seed)
        | {
            "loss.name": "ipo",
            "loss.beta": r.beta,
            "loss.sft_weight": r.sft_weight,
            "optim.steps": r.steps,
            "optim.lr": r.lr,
            "eval_every": max(r.steps // 2, 1),
            "out": str(rdir / "run"),
        },
    )
    run_dir = train(cfg)
    train_s = time.perf_counter() - t
    eval_out = rdir / "eval"
    if not (eval_out / "cache.sqlite").exists():
        previous = sorted((out / "recipes").glob("*/eval/cache.sqlite"), key=lambda p: p.stat().st_mtime)
        if previous:
            eval_out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(previous[-1], eval_out / "cache.sqlite")
    t = time.perf_counter()
    result = run_eval(
        EvalConfig(
            data=str(val),
            methods=["base", "fspo-ipo"],
            model=str(run_dir),
            base_model=model,
            shots=4,
            judge="attribute",
            seed=seed,
            out=str(eval_out),
            progress=False,
            **eval_kw,
        )
    )
    eval_s = time.perf_counter() - t
    row = summarize(r, result, run_dir) | {"train_s": round(train_s), "eval_s": round(eval_s)}
    write_text_atomic(done, json.dumps(row, indent=2))
    return row


def summarize(r: Recipe, result: dict, run_dir: Path) -> dict:
    from fspo.demo import summary_table

    rows = {x["method"]: x for x in summary_table(result)}
    m, b = rows["fspo-ipo"], rows["base"]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [x for x in metrics if "eval/reward_accuracy" in x]
    return {
        "recipe": r.__dict__,
        "n": m["n"],
        "win_rate": m["win_rate"],
        "ci": m["ci"],
        "wins_ties_losses": m["wins_ties_losses"],
        "reward_accuracy": m["reward_accuracy"],
        "train_reward_accuracy_curve": [(x["step"], x["eval/reward_accuracy"]) for x in evals],
        "attribute_match": m["attribute_match"],
        "on_topic": m["on_topic"],
        "degenerate": m["degenerate"],
        "acceptable": m["acceptable"],
        "mean_base_nll": m["mean_base_nll"],
        "base": {k: b[k] for k in ("on_topic", "degenerate", "acceptable", "mean_base_nll", "attribute_match")},
        "samples": m["samples"],
        "base_samples": b["samples"],
    }


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_table(rows: list[dict]) -> str:
    head = (
        "| recipe | sft_weight | lr | β | steps | n | win rate vs base [95% CI] | W/T/L | reward acc. (val users) "
        "| on-topic | degenerate | acceptable | attr. match | train / eval s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for x in rows:
        r = x["recipe"]
        lo, hi = x["ci"]
        lines.append(
            f"| {r['name']} | {r['sft_weight']} | {r['lr']:g} | {r['beta']} | {r['steps']} | {x['n']} "
            f"| {_pct(x['win_rate'])} [{100 * lo:.0f}, {100 * hi:.0f}] | {'/'.join(map(str, x['wins_ties_losses']))} "
            f"| {_pct(x['reward_accuracy'])} | {_pct(x['on_topic'])} | {_pct(x['degenerate'])} "
            f"| {_pct(x['acceptable'])} | {_pct(x['attribute_match'])} | {x['train_s']} / {x['eval_s']} |"
        )
    if rows:
        b = rows[0]["base"]
        lines.append(
            f"| base (zero-shot) | | | | | {rows[0]['n']} | (baseline) | | | {_pct(b['on_topic'])} "
            f"| {_pct(b['degenerate'])} | {_pct(b['acceptable'])} | {_pct(b['attribute_match'])} | |"
        )
    return "\n".join(lines)


def sample_block(rows: list[dict]) -> str:
    out = []
    for x in rows:
        out.append(f"**{x['recipe']['name']}**")
        out.append("")
        for s in x["samples"]:
            flags = f" [{', '.join(s['flags'])}]" if s["flags"] else ""
            answer = " ".join(s["answer"].split()) or "(empty)"
            out.append(f"- {s['user_id']}: {s['question']} -> {answer}{flags}")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-out/recipe-sweep")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help=f"comma-separated, of {list(RECIPES)}")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--questions", type=int, default=12)
    p.add_argument("--val-users", type=int, default=8)
    p.add_argument("--sft-steps", type=int, default=6)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every recipe's IPO steps (smoke tests)")
    p.add_argument("--eval-users", type=int, default=8)
    p.add_argument("--eval-queries", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    val = make_data(out, a.users, a.questions, a.val_users, a.seed)
    print(f"data: {val} ({time.perf_counter() - t0:.0f} s)", flush=True)
    sft = train_sft(out, val, a.model, a.seed, a.sft_steps)
    print(f"sft: {sft} ({time.perf_counter() - t0:.0f} s)", flush=True)
    eval_kw = {
        "users": a.eval_users,
        "queries": a.eval_queries,
        "shots_curve": [0, 4],
        "max_new_tokens": a.max_new_tokens,
    }
    rows = []
    for name in [x for x in a.recipes.split(",") if x]:
        sw, lr, beta, steps = RECIPES[name]
        r = Recipe(name, sw, lr, beta, max(1, round(steps * a.steps_scale)))
        print(f"recipe {name}: sft_weight {sw}, lr {lr:g}, beta {beta}, {r.steps} steps", flush=True)
        rows.append(run_recipe(out, val, sft, a.model, r, a.seed, eval_kw))
        x = rows[-1]
        print(
            f"  win {_pct(x['win_rate'])} on-topic {_pct(x['on_topic'])} degenerate {_pct(x['degenerate'])} "
            f"acceptable {_pct(x['acceptable'])} reward acc {_pct(x['reward_accuracy'])} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        table = format_table(rows)
        header = (
            f"Recipe sweep, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
            f"model {a.model}; validation users {json.loads((val / 'split.json').read_text())['validation_users']}"
        )
        write_text_atomic(out / "table.md", header + "\n\n" + table + "\n\n" + sample_block(rows))
        write_text_atomic(out / "sweep.json", json.dumps(rows, indent=2))
    print("\n" + format_table(rows))
    print(f"\nTotal {(time.perf_counter() - t0) / 60:.1f} min. {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
