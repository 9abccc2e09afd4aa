"""Does choosing the checkpoint on validation users help? (issue 13, section 2)

The demo's data and recipe (fspo.demo.RECIPE, SFT 6 + IPO 30 steps, 4 shots), with a quarter of the
training users set aside as validation users and a checkpoint every 5 IPO steps. ``fspo select``
judges every checkpoint against base on the validation users; then the selected model and the last
step are both evaluated on the data's **test** users (which selection never saw), with the same
judge, queries and seed, so the two test rows differ only by the checkpoint.

    python bench/checkpoint_selection.py --out bench-out/selection
    python bench/checkpoint_selection.py --model tiny --steps 4 --save-every 2 --out /tmp/sel   # smoke test

Every stage resumes when rerun (training, selection and eval cache their work).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/selection")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--val-users", type=float, default=0.25, help="share of training users set aside")
    ap.add_argument("--test-users", type=int, default=8)
    ap.add_argument("--test-queries", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from fspo.config import load_config
    from fspo.demo import RECIPE, DemoPlan
    from fspo.eval.config import EvalConfig
    from fspo.eval.runner import run_eval
    from fspo.eval.selection import SelectConfig, select_checkpoint
    from fspo.synth.pipeline import SynthConfig, run_synth
    from fspo.train.config import TrainConfig
    from fspo.train.trainer import train

    out, plan, t0 = Path(a.out), DemoPlan(), time.perf_counter()
    data = out / "data"
    if not (data / "prefs.jsonl").exists():
        run_synth(
            SynthConfig(
                domain="reviews", users=plan.users, questions=plan.questions, out=data, seed=a.seed, embed=False
            ),
            llms=[],
        )
    overrides = {
        **RECIPE,
        "data.path": str(data),
        "model.name": a.model,
        "data.shots": plan.shots,
        "data.max_length": plan.max_length,
        "data.heldout_users": a.val_users,
        "data.eval_episodes": 16,
        "optim.steps": a.steps,
        "optim.sft_steps": plan.sft_steps,
        "save_every": a.save_every,
        "eval_every": a.save_every,
        "keep_checkpoints": 0,
        "keep_checkpoints_after_finish": True,
        "seed": a.seed,
        "out": str(out / "run"),
    }
    run = train(load_config(TrainConfig, None, overrides))
    t_train = time.perf_counter() - t0
    selection = select_checkpoint(SelectConfig(run=str(run), queries=4, seed=a.seed))
    t_select = time.perf_counter() - t0 - t_train
    # the test rows read the data without the validation users: eval would otherwise add them (the
    # run held them out), and the selected model was chosen on them
    from fspo.data.io import load_data, write_jsonl

    full, val = load_data(data), set(selection["validation_users"])
    test_data = out / "test-data"
    write_jsonl(test_data / "users.jsonl", [u for u in full.users.values() if u.user_id not in val])
    write_jsonl(test_data / "prefs.jsonl", [r for r in full.prefs if r.user_id not in val])
    last_step = max(c["step"] for c in selection["candidates"])
    models = {"last step": str(run)}
    if selection["selected_step"] != last_step:
        models["selected"] = str(run / "selected")
    test = {}
    for name, model in models.items():
        res = run_eval(
            EvalConfig(
                data=str(test_data),
                methods=["base", "fspo-ipo"],
                model=model,
                judge="attribute",
                users=a.test_users,
                queries=a.test_queries,
                reward_accuracy=False,
                heldout_questions=False,
                max_new_tokens=plan.max_new_tokens,
                seed=a.seed,
                out=str(out / "test-eval"),  # one cache: base answers made once
                progress=False,
            )
        )
        assert not set(res["users"]) & val, "a validation user in the test rows"
        wr, q = res["win_rate"]["fspo-ipo"], res["methods"]["fspo-ipo"]["quality"]
        test[name] = {"win_rate": wr["win_rate"], "ci": wr["ci"], "n": wr["n"], **{
            k: q[k] for k in ("on_topic", "degenerate", "acceptable", "samples")
        }}  # fmt: skip
    if "selected" not in test:
        test["selected"] = test["last step"]
    minutes = (time.perf_counter() - t0) / 60

    lines = [
        f"`python bench/checkpoint_selection.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
        f"{time.strftime('%Y-%m-%d')}, {minutes:.0f} min (training {t_train / 60:.0f}, selection {t_select / 60:.0f}); "
        f"validation users {', '.join(selection['validation_users'])}",
        "",
        "| IPO step | validation win rate vs base [95% CI] | n | acceptable | on-topic | degenerate |",
        "|---|---|---|---|---|---|",
    ]
    for c in selection["candidates"]:
        mark = " (selected)" if c["step"] == selection["selected_step"] else ""
        lines.append(
            f"| {c['step']}{mark} | {100 * c['win_rate']:.1f}% [{100 * c['ci'][0]:.0f}, {100 * c['ci'][1]:.0f}] | "
            f"{c['n']} | {100 * c['acceptable']:.0f}% | {100 * c['on_topic']:.0f}% | {100 * c['degenerate']:.0f}% |"
        )
    lines += [
        "",
        "| test users | win rate vs base [95% CI] | n | acceptable | on-topic | degenerate |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in test.items():
        lines.append(
            f"| {name} | {100 * r['win_rate']:.1f}% [{100 * r['ci'][0]:.0f}, {100 * r['ci'][1]:.0f}] | {r['n']} | "
            f"{100 * r['acceptable']:.0f}% | {100 * r['on_topic']:.0f}% | {100 * r['degenerate']:.0f}% |"
        )
    lines += ["", "Sample answers on test users (selected model):", ""]
    lines += [
        f"- {x['user_id']}: {x['question']} → {' '.join(x['answer'].split())}" for x in test["selected"]["samples"]
    ]
    md = "\n".join(lines) + "\n"
    (out / "selection.md").write_text(md)
    (out / "selection.json").write_text(json.dumps({"selection": selection, "test": test}, indent=2))
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
