"""``fspo demo``: the whole loop on the embedded model, on a CPU, in one command.

synth (reviews users over sentiment x length, exact attribute labels) -> train (SFT then IPO on
4-shot episodes) -> eval (base, few-shot prompting and FSPO on held-out users: attribute-judged
win rate vs base with CIs, and reward accuracy) -> a one-screen table and ``report.md``.

Every stage caches under ``--out`` (synth calls, training checkpoints, eval generations), so a
second run reuses finished stages and a killed run resumes. The converted embedded model is
cached under ``--out/.cache`` too unless ``FSPO_CACHE`` points elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fspo.config import Config, opt


@dataclass
class DemoPlan:
    """Sizes of each stage. ``full`` fits 20 minutes on 2 CPU cores; ``fast`` fits 3."""

    users: int = 32
    questions: int = 12
    heldout_users: float = 0.25
    shots: int = 4
    max_length: int = 512
    sft_steps: int = 6
    steps: int = 30  # issue 13's recipe sweep (docs/training.md): 30 IPO steps at lr 5e-5, beta 0.5, sft_weight 0.5
    batch_size: int = 2
    lr: float = 5e-5  # the IPO stage's; the SFT stage keeps 1e-4 (RECIPE's optim.sft_lr)
    eval_users: int = 8
    eval_queries: int = 6  # 8 users x 6 = 48 answers per row: a CI of about +-10 points instead of +-20
    shots_curve: list[int] = field(default_factory=lambda: [0, 4])
    max_new_tokens: int = 64
    methods: list[str] = field(default_factory=lambda: ["base", "fewshot", "fspo-ipo"])
    embed: bool = True


RECIPE: dict[str, object] = {
    "loss.name": "sft+ipo",
    "loss.beta": 0.5,
    "loss.sft_weight": 0.5,
    "loss.reduction": "mean",
    "optim.lr": 5e-5,
    "optim.sft_lr": 1e-4,
    "optim.batch_size": 2,
    "optim.shared_prefix": True,
}
"""The training recipe issue 13's sweep chose on validation users (docs/training.md): SFT at lr 1e-4,
then IPO β 0.5 at lr 5e-5 with an NLL term on the chosen answer. The demo and
bench/quality_reviews.py both train with it."""

FAST = DemoPlan(
    users=12,
    questions=6,
    shots=2,
    max_length=320,
    sft_steps=2,
    steps=4,
    eval_users=3,
    eval_queries=1,
    shots_curve=[0, 2],
    max_new_tokens=24,
    embed=False,
)


def _banner(i: int, n: int, name: str, t0: float) -> None:
    print(f"\n[{i}/{n}] {name}  (elapsed {time.perf_counter() - t0:.0f} s)", flush=True)


@contextmanager
def model_cache_under(out: Path) -> Iterator[None]:
    """Keep the converted embedded model under ``out`` (unless FSPO_CACHE is set) for this run only."""
    if os.environ.get("FSPO_CACHE"):
        yield
        return
    os.environ["FSPO_CACHE"] = str((out / ".cache").resolve())
    try:
        yield
    finally:
        os.environ.pop("FSPO_CACHE", None)


def run_demo(out: str | Path, fast: bool = False, model: str = "smollm2", seed: int = 0, progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with model_cache_under(out):
        return _run_demo(out, fast, model, seed, progress)


def _run_demo(out: Path, fast: bool, model: str, seed: int, progress: bool) -> dict:
    from fspo.config import load_config
    from fspo.eval.runner import EvalConfig, run_eval
    from fspo.synth.pipeline import SynthConfig, run_synth
    from fspo.train.config import TrainConfig
    from fspo.train.trainer import train

    plan = FAST if fast else DemoPlan()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    _banner(1, 4, f"synth: reviews domain, {plan.users} users x {plan.questions} questions", t0)
    s = time.perf_counter()
    synth = run_synth(
        SynthConfig(
            domain="reviews",
            users=plan.users,
            questions=plan.questions,
            out=out / "data",
            seed=seed,
            heldout_users=plan.heldout_users,
            embed=plan.embed,
            progress=progress,
        ),
        llms=[],
    )
    timings["synth_s"] = time.perf_counter() - s

    _banner(
        2,
        4,
        f"train: {model}, SFT {plan.sft_steps} steps then IPO {plan.steps} steps on {plan.shots}-shot episodes",
        t0,
    )
    s = time.perf_counter()
    cfg = load_config(
        TrainConfig,
        None,
        {
            "data.path": str(out / "data"),
            "data.shots": plan.shots,
            "data.max_length": plan.max_length,
            "data.eval_episodes": 16 if not fast else 4,
            "model.name": model,
            **RECIPE,
            "optim.steps": plan.steps,
            "optim.sft_steps": plan.sft_steps,
            "optim.lr": plan.lr,
            "optim.batch_size": plan.batch_size,
            "out": str(out / "run"),
            "seed": seed,
            "eval_every": max(plan.steps // 2, 1),
            "save_every": 10,
            "progress": progress,
        },
    )
    run_dir = train(cfg)
    timings["train_s"] = time.perf_counter() - s

    _banner(3, 4, f"eval: {', '.join(plan.methods)} on {plan.eval_users} held-out users (attribute judge)", t0)
    s = time.perf_counter()
    result = run_eval(
        EvalConfig(
            data=str(out / "data"),
            methods=plan.methods,
            model=str(run_dir),
            base_model=model,
            shots=plan.shots,
            shots_curve=plan.shots_curve,
            judge="attribute",
            users=plan.eval_users,
            queries=plan.eval_queries,
            max_new_tokens=plan.max_new_tokens,
            seed=seed,
            out=str(out / "eval"),
            progress=progress,
        )
    )
    timings["eval_s"] = time.perf_counter() - s

    _banner(4, 4, "report: and out-of-template users (hand-written tastes the templates do not express)", t0)
    s = time.perf_counter()
    oot = out_of_template_check(run_dir, model, out, plan.max_new_tokens, seed)
    timings["out_of_template_s"] = time.perf_counter() - s
    timings["total_s"] = time.perf_counter() - t0
    table = summary_table(result)
    summary = {
        "plan": plan.__dict__ | {"fast": fast, "model": model},
        "timings": timings,
        "table": table,
        "synth": {k: synth.get(k) for k in ("counts",) if k in synth},
        "out_of_template": oot,
    }
    write_demo_report(out, result, summary, run_dir)
    print("\n" + format_table(table))
    print(f"\nTotal {timings['total_s'] / 60:.1f} min. Report: {out / 'report.md'}")
    return summary


def out_of_template_check(run_dir: Path, base: str, out: Path, max_new_tokens: int, seed: int) -> dict:
    """The trained model and the base model on the hand-written out-of-template users' questions."""
    from fspo.data.prompts import ZEROSHOT
    from fspo.data.runs import resolve_model
    from fspo.eval.generate import ModelPool, open_cache
    from fspo.eval.out_of_template import Row, check

    trained = resolve_model(str(run_dir))
    rows = [
        Row("fspo-ipo", trained.spec, trained.layout, trained.chat_template, trained.max_length),
        Row("base", base, ZEROSHOT.name, False, trained.max_length),
    ]
    cache = open_cache(out / "eval")
    try:
        return check(rows, ModelPool(seed=seed), cache, max_new_tokens=max_new_tokens)
    finally:
        cache.close()


def summary_table(result: dict) -> list[dict]:
    """One row per method: win rate vs the baseline (with CI), reward accuracy at the generation N,
    the shares of on-topic and degenerate answers, and three sample answers."""
    shots = str(result["config"]["shots"])
    rows = []
    for method, info in result["methods"].items():
        wr = result["win_rate"].get(method)
        ra = (result.get("reward_accuracy") or {}).get(method, {}).get("splits", {}).get("heldout_users")
        point = (ra or {}).get("points", {}).get(shots)
        rows.append(
            {
                "method": method,
                "n": info["n"],
                "win_rate": wr["win_rate"] if wr else None,
                "ci": wr["ci"] if wr else None,
                "wins_ties_losses": [wr["wins"], wr["ties"], wr["losses"]] if wr else None,
                "reward_accuracy": point["accuracy"] if point else None,
                "reward_metric": (ra or {}).get("metric"),
                "attribute_match": (info.get("attribute_match") or {}).get("all"),
                "on_topic": (info.get("quality") or {}).get("on_topic"),
                "degenerate": (info.get("quality") or {}).get("degenerate"),
                "acceptable": (info.get("quality") or {}).get("acceptable"),
                "mean_base_nll": (info.get("quality") or {}).get("mean_base_nll"),
                "samples": (info.get("quality") or {}).get("samples", []),
            }
        )
    return rows


def _pct(x) -> str:
    return "  -  " if x is None else f"{100 * x:5.1f}%"


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'method':<10} {'n':>3}  {'win rate vs base [95% CI]':<28} {'W/T/L':<9} {'reward acc.':<18} "
        f"{'attr. match':>11} {'on-topic':>8} {'degen.':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["win_rate"] is None:
            wr = "(baseline)"
        else:
            lo, hi = r["ci"]
            wr = f"{_pct(r['win_rate'])} [{100 * lo:.0f}, {100 * hi:.0f}]"
        wtl = "/".join(map(str, r["wins_ties_losses"])) if r["wins_ties_losses"] else ""
        metric = {"implicit_reward": "h>0", "loglik": "LL"}.get(r["reward_metric"] or "", "")
        ra = f"{_pct(r['reward_accuracy'])} ({metric})" if r["reward_accuracy"] is not None else "-"
        lines.append(
            f"{r['method']:<10} {r['n']:>3}  {wr:<28} {wtl:<9} {ra:<18} {_pct(r['attribute_match']):>11} "
            f"{_pct(r.get('on_topic')):>8} {_pct(r.get('degenerate')):>7}"
        )
    return "\n".join(lines)


def sample_lines(rows: list[dict]) -> list[str]:
    """Each method's three sample answers (the same queries for every method), with their flags."""
    by_query: dict[tuple, list[str]] = {}
    for r in rows:
        for s in r.get("samples") or []:
            flags = f" [{', '.join(s['flags'])}]" if s["flags"] else ""
            answer = " ".join(s["answer"].split()) or "(empty)"
            by_query.setdefault((s["user_id"], s["question"]), []).append(f"- {r['method']}{flags}: {answer}")
    lines = []
    for (user, question), answers in by_query.items():
        lines += [f"**{user}: {question}**", "", *answers, ""]
    return lines


def _training_curve(run_dir: Path) -> list[str]:
    lines = []
    for stage in ("sft", "ipo"):
        path = run_dir / stage / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        evals = [r for r in rows if "eval/ll_accuracy" in r]
        cells = []
        for r in evals:
            acc = r.get("eval/reward_accuracy", r["eval/ll_accuracy"])
            kind = "h>0" if "eval/reward_accuracy" in r else "LL"
            cells.append(f"step {r['step']}: {100 * acc:.0f}% ({kind})")
        steps = [r for r in rows if "loss" in r]
        secs = sum(r["step_seconds"] for r in steps) / max(1, len(steps))
        lines.append(f"- {stage}: {len(steps)} steps, {secs:.1f} s/step; held-out accuracy " + ", ".join(cells))
    return lines


def write_demo_report(out: Path, result: dict, summary: dict, run_dir: Path) -> None:
    from fspo.data.io import write_text_atomic
    from fspo.eval.out_of_template import report_lines as out_of_template_lines

    t = summary["timings"]
    lines = [
        "# fspo demo",
        "",
        f"Model `{summary['plan']['model']}`; reviews-domain synthetic users (sentiment x length x perspective), "
        f"{summary['plan']['users']} users of which {int(round(summary['plan']['users'] * summary['plan']['heldout_users']))} held out; "
        f"{summary['plan']['shots']}-shot episodes; SFT then IPO; attribute judge.",
        "",
        "```",
        format_table(summary["table"]),
        "```",
        "",
        "Win rate: the method's answer against the base model's (zero-shot) answer for the same held-out user and "
        "question, judged by the user's hidden attributes (sentiment by VADER, length in words, first-person perspective); ties count half; "
        "95% bootstrap CI over users. Reward accuracy: does the model rank the user's chosen review above the "
        "rejected one given the shots (h>0: implicit reward vs the SFT reference; LL: log-likelihood). "
        "On-topic: the review names the item asked; degenerate: a repetition loop (repeated 4-grams, distinct-2) "
        "or text the base model finds far less likely than fluent answers (mean per-token NLL). An off-topic, "
        "degenerate, empty, echoing or template-leaking answer loses to an acceptable one and two of them tie "
        "(docs/evaluation.md, acceptability gate).",
        "",
        "## Sample answers",
        "",
        *sample_lines(summary["table"]),
        "## Out-of-template users",
        "",
        *(out_of_template_lines(summary["out_of_template"]) if summary.get("out_of_template") else ["(not run)"]),
        "",
        "## Training",
        "",
        *_training_curve(run_dir),
        "",
        "## Plots",
        "",
        "![win rate](eval/win_rate.png)",
        "",
        "![reward accuracy vs shots](eval/reward_accuracy_vs_shots.png)",
        "",
        f"Time: synth {t['synth_s']:.0f} s, train {t['train_s']:.0f} s, eval {t['eval_s']:.0f} s, "
        f"total {t['total_s'] / 60:.1f} min. Full evaluation report: [eval/report.md](eval/report.md); "
        "data diagnostics: [data/diagnostics/report.md](data/diagnostics/report.md).",
        "",
    ]
    write_text_atomic(out / "report.md", "\n".join(lines))
    write_text_atomic(out / "demo.json", json.dumps(summary, indent=2))


@dataclass
class DemoConfig(Config):
    out: str = opt("demo", "output folder")
    fast: bool = opt(False, "a smoke-sized run (under 3 minutes)")
    model: str = opt("smollm2", "smollm2 | tiny | a local model folder")
    seed: int = opt(0, "seed of every stage", ge=0)
    progress: bool = opt(True, "progress bars")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from fspo.config import add_config_arguments

    p = sub.add_parser(
        "demo",
        help="the whole loop on the embedded model: synth -> train -> eval -> report (about 20 min on 2 CPU cores)",
        description="Build synthetic reviews users, train SmolLM2-135M with SFT then IPO on few-shot episodes, and "
        "evaluate base, few-shot prompting and FSPO on held-out users. Everything is written under --out; a second "
        "run reuses finished stages.",
    )
    add_config_arguments(p, DemoConfig, {"quiet": "!progress"})
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    from fspo.config import config_from_args

    cfg = config_from_args(DemoConfig, args)
    run_demo(cfg.out, cfg.fast, cfg.model, cfg.seed, cfg.progress)
    return 0
