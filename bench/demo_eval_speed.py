"""The demo's eval stage, baseline code vs current code, in one run (issue 18).

Runs the eval ``fspo demo`` runs (its ``DemoPlan``: base, fewshot, fspo-ipo on 8 held-out users x 6
queries, 4 shots, shots curve 0 and 4, attribute judge, 64 new tokens) on a finished demo's data and
trained run, twice, each into a fresh folder (nothing cached): once on the baseline commit (a
``git worktree`` checkout, imported through PYTHONPATH) and once on the current checkout. Prints the
seconds of each, ``eval_speedup`` and whether the results are identical: eval.json without its
timings and output folder, and generations.jsonl byte for byte.

    python bench/demo_eval_speed.py --demo /tmp/q13/demo512word --out /tmp/evalspeed/bench
    python bench/demo_eval_speed.py --demo /tmp/q13/demo512word --fast   # smoke test: the fast demo's eval plan
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "351c7797af59650dad0e1bef0b3773f00e80b56c"  # HEAD before issue 18's eval lanes

CHILD = """
import json, sys, time
from fspo.demo import FAST, DemoPlan
from fspo.eval.runner import EvalConfig, run_eval
demo, out, fast = sys.argv[1], sys.argv[2], sys.argv[3] == "fast"
plan = FAST if fast else DemoPlan()
cfg = EvalConfig(data=f"{demo}/data", methods=plan.methods, model=f"{demo}/run", base_model="smollm2",
                 shots=plan.shots, shots_curve=plan.shots_curve, judge="attribute", users=plan.eval_users,
                 queries=plan.eval_queries, max_new_tokens=plan.max_new_tokens, seed=0, out=out, progress=False)
t = time.perf_counter()
result = run_eval(cfg)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t, "timing": result["timing"]}))
"""


def run_eval_with(src: Path, demo: Path, out: Path, fast: bool = False) -> dict:
    """The demo's eval with the fspo package under ``src``, in a fresh process and folder."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if (demo / ".cache").is_dir():
        env.setdefault("FSPO_CACHE", str(demo / ".cache"))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(demo), str(out), "fast" if fast else "full"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"eval with {src} failed:\n{proc.stderr[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def comparable(folder: Path, drop: frozenset[str] = frozenset()) -> tuple[str, bytes]:
    """eval.json without timings, output folder and the ``drop`` config keys (canonical JSON), and
    generations.jsonl."""
    result = json.loads((folder / "eval.json").read_text())
    result.pop("timing", None)
    for key in {"out", *drop}:
        result["config"].pop(key, None)
    return json.dumps(result, sort_keys=True), (folder / "generations.jsonl").read_bytes()


def added_options(baseline: Path, current: Path) -> frozenset[str]:
    """Eval options the current code has and the baseline lacks, each at its default (an option set
    to anything else would be a different eval, and stays in the comparison)."""
    from fspo.config import to_dict
    from fspo.eval.config import EvalConfig

    old = json.loads((baseline / "eval.json").read_text())["config"]
    new = json.loads((current / "eval.json").read_text())["config"]
    defaults = to_dict(EvalConfig())
    return frozenset(k for k in set(new) - set(old) if k in defaults and new[k] == defaults[k])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="a finished `fspo demo` folder (data/, run/)")
    ap.add_argument("--out", default="bench-out/demo-eval-speed", help="folder for the two evals")
    ap.add_argument("--baseline", default=BASELINE, help="commit of the baseline code")
    ap.add_argument("--worktree", default="/tmp/evalspeed/base", help="where the baseline is checked out")
    ap.add_argument("--fast", action="store_true", help="the fast demo's eval plan (a smoke test of this script)")
    args = ap.parse_args(argv)
    demo, out, tree = Path(args.demo).resolve(), Path(args.out).resolve(), Path(args.worktree)
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline], check=True)
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    if head.stdout.strip() != args.baseline:
        raise SystemExit(f"{tree} is at {head.stdout.strip()}, not the baseline {args.baseline}")

    base = run_eval_with(tree / "src", demo, out / "baseline", args.fast)
    print(f"baseline ({args.baseline[:10]}): {base['seconds']:.1f} s  {json.dumps(base['timing'])}", flush=True)
    new = run_eval_with(REPO / "src", demo, out / "current", args.fast)
    print(f"current: {new['seconds']:.1f} s  {json.dumps(new['timing'])}", flush=True)
    added = added_options(out / "baseline", out / "current")
    if added:
        print(f"options added since the baseline, at their defaults, left out of the comparison: {sorted(added)}")
    same_json, same_gens = (
        a == b for a, b in zip(comparable(out / "baseline", added), comparable(out / "current", added))
    )
    print(f"eval_speedup={base['seconds'] / new['seconds']:.2f}")
    print(f"identical eval.json (without timings): {same_json}; identical generations.jsonl: {same_gens}")


if __name__ == "__main__":
    main()
