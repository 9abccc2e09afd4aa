"""LoRA vs full fine-tuning for FSPO on the embedded model: same data, episodes, steps and seed.

Why: issue 8 asks that the choice between a full fine-tune and LoRA be justified by a measurement.
Both sides run the quality benchmark's 4-shot FSPO recipe (SFT then IPO, shared-prefix batches)
on the same reviews dataset, each in its own ``fspo train`` process, one after the other, so that
each side's peak memory is its own. The learning rates differ on purpose (LoRA usually wants about
10x the full fine-tune's); everything else is identical.

Reported per side: wall time of the whole run, mean seconds per optimizer step of each stage
(the first step of a stage is a warm-up and is left out), peak RSS of the training process
(psutil, sampled every 50 ms), and the held-out-user reward accuracy the trainer logs at each
evaluation step (16 episodes, so one episode is 6 points). The last lines print LoRA/full ratios.

    python bench/lora_vs_full.py                         # small reviews data, 6 SFT + 40 IPO steps
    python bench/lora_vs_full.py --data bench-out/quality-small2/data --out bench-out/lora
    python bench/lora_vs_full.py --model tiny --steps 2 --sft-steps 1   # smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from fspo.data.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_reviews  # noqa: E402  (the benchmark whose recipe this one compares)


def measure(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` to completion; return (wall seconds, peak RSS in MB of the process and its children)."""
    t = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        peak, done = 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            p = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                except psutil.Error:
                    break
                peak = max(peak, rss)
                time.sleep(0.05)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        rc = proc.wait()
        done.set()
        thread.join()
    if rc != 0:
        raise SystemExit(f"error: {cmd[0]} exited with {rc}; see {log}")
    return time.perf_counter() - t, peak / 2**20


def stage_stats(metrics: Path) -> dict:
    """Mean s/step (warm-up step excluded) and the held-out reward accuracy at each evaluation step."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    secs = [r["step_seconds"] for r in rows if "step_seconds" in r and r["step"] > 1]
    evals = {  # string keys: the shape a result has after a round trip through its JSON file
        str(r["step"]): r.get("eval/reward_accuracy", r.get("eval/ll_accuracy"))
        for r in rows
        if "eval/ll_accuracy" in r
    }
    return {"s_per_step": sum(secs) / len(secs) if secs else None, "heldout_acc": evals}


def run_side(name: str, overrides: dict, out: Path) -> dict:
    """Train one side (or reuse its saved result: the bench resumes per side)."""
    result_file = out / f"{name}.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    run_dir = out / "runs" / name
    fspo = Path(sys.executable).with_name("fspo")
    cmd = [str(fspo), "train", *(f"{k}={v}" for k, v in overrides.items()), f"out={run_dir}"]
    print(f"== train {name}: {' '.join(cmd[1:])}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    wall, peak = measure(cmd, out / f"{name}.log")
    result = {
        "wall_s": wall,
        "peak_rss_mb": peak,
        "sft": stage_stats(run_dir / "sft" / "metrics.jsonl"),
        "ipo": stage_stats(run_dir / "ipo" / "metrics.jsonl"),
    }
    write_text_atomic(result_file, json.dumps(result, indent=2))  # its presence marks the side as done
    print(f"== {name}: {wall:.0f} s, peak RSS {peak:.0f} MB", flush=True)
    return result


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def render(results: dict[str, dict]) -> str:
    steps = sorted({int(s) for r in results.values() for s in r["ipo"]["heldout_acc"]})
    head = ["side", "wall (s)", "SFT s/step", "IPO s/step", "peak RSS (MB)", *(f"held-out acc @{s}" for s in steps)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        acc = {int(k): v for k, v in r["ipo"]["heldout_acc"].items()}
        cells = [
            name,
            f"{r['wall_s']:.0f}",
            _fmt(r["sft"]["s_per_step"]),
            _fmt(r["ipo"]["s_per_step"]),
            f"{r['peak_rss_mb']:.0f}",
            *(f"{100 * acc[s]:.1f}%" if s in acc else "-" for s in steps),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="a dataset folder (default: build the small reviews data in --out)")
    ap.add_argument("--out", default="bench-out/lora")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=quality_reviews.SCALES["small"]["steps"])
    ap.add_argument("--sft-steps", type=int, default=quality_reviews.SCALES["small"]["sft_steps"])
    ap.add_argument("--full-lr", type=float, default=1e-4)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    scale = {**quality_reviews.SCALES["small"], "steps": args.steps, "sft_steps": args.sft_steps}
    data = Path(args.data) if args.data else quality_reviews.build_data(out, scale, args.seed)
    # the 4-shot IPO row's recipe with this script's --sft-steps (as measured in docs/benchmarks.md)
    recipe = {
        **quality_reviews.run_overrides(data, scale, args.seed, args.model)["fspo4-sft60"],
        "optim.sft_steps": args.sft_steps,
    }
    sides = {
        "full": {**recipe, "optim.lr": args.full_lr},
        "lora": {
            **recipe,
            "optim.lr": args.lora_lr,
            "model.lora": "true",
            "model.lora_r": args.lora_r,
            "model.lora_alpha": 2 * args.lora_r,
        },
    }
    results = {name: run_side(name, o, out) for name, o in sides.items()}
    full, lora = results["full"], results["lora"]
    table = render(results)
    last = str(max(int(s) for s in full["ipo"]["heldout_acc"]))
    md = "\n".join(
        [
            f"`python bench/lora_vs_full.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
            f"{time.strftime('%Y-%m-%d')}: data {data}, {args.sft_steps} SFT + {args.steps} IPO steps, "
            f"lr full {args.full_lr:g} / LoRA {args.lora_lr:g} (r {args.lora_r}).",
            "",
            table,
            "",
            f"lora_over_full wall={lora['wall_s'] / full['wall_s']:.2f} "
            f"ipo_s_per_step={_fmt(_ratio(lora['ipo']['s_per_step'], full['ipo']['s_per_step']))} "
            f"peak_rss={lora['peak_rss_mb'] / full['peak_rss_mb']:.2f} "
            f"heldout_acc@{last}: lora {lora['ipo']['heldout_acc'].get(last, float('nan')):.3f} "
            f"vs full {full['ipo']['heldout_acc'][last]:.3f}",
        ]
    )
    write_text_atomic(out / "lora_vs_full.md", md + "\n")
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
