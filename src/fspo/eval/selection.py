"""Pick a run's checkpoint by the judge, on validation users (issue 13, section 2).

Validation users are training-pool users that training set aside (``--data.heldout_users F``: they
are in the run record's held-out users, and the data does not mark them ``test``). Every kept
checkpoint of the run's last stage, and its final model, answers their queries; the eval's judge
(acceptability first, then the user's attributes, or the LLM judge) compares each answer with the
base model's, and the checkpoint with the highest win rate is linked as ``RUN/selected/``, a model
folder with the run record, usable wherever a model is (``fspo eval --model RUN/selected``).

The test users never take part: selection reads a copy of the data without them, so a number
reported on test users is not chosen on them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fspo.config import Config, opt
from fspo.data.io import load_data, write_jsonl, write_text_atomic
from fspo.data.prompts import FSPO, RAT, ZEROSHOT
from fspo.data.runs import FINAL_DIR, RUN_FILE, RunRecord, read_record
from fspo.errors import FspoError
from fspo.eval.config import JUDGES
from fspo.train import checkpoint as ckpt

SELECTED_DIR = "selected"
SELECT_DIR = "select"
METHOD_OF_LAYOUT = {FSPO.name: "fspo-ipo", RAT.name: "fspo-rat", ZEROSHOT.name: "pooled"}


@dataclass
class SelectConfig(Config):
    run: str = opt("", "trained run folder (kept checkpoints: --keep_checkpoints_after_finish true)", required=True)
    data: str = opt("", "the dataset the run trained on (default: the run's data.path)")
    judge: str = opt("attribute", "pairwise judge", choices=list(JUDGES))
    judge_model: str | None = opt(None, "LLM judge: scripted | tiny | smollm2 | DIR | http://host:port/v1#model")
    users: int = opt(0, "validation users to answer for, evenly spread (0 = all)", ge=0)
    queries: int = opt(2, "queries per validation user (0 = all)", ge=0)
    max_new_tokens: int = opt(64, "generation length", ge=1)
    seed: int = opt(0, "seed of the episodes and the bootstrap", ge=0)
    progress: bool = opt(True, "progress output")


@dataclass(frozen=True)
class Candidate:
    step: int
    folder: Path  # a model folder with the run record (what eval loads)
    source: Path  # the checkpoint or final folder it shows


def _test_users(data) -> set[str]:
    """The users the data itself marks ``split: test``."""
    from fspo.data.splits import heldout_user_ids

    return set(heldout_user_ids(data, 0.0, 0)[1])


def validation_users(record: RunRecord, data) -> list[str]:
    """Held out of training by the run, and not a test user of the data."""
    return sorted(set(record.heldout_users) - _test_users(data))


def validation_view(data, dest: Path) -> Path:
    """A copy of the data without its test users (every row of the other users kept): eval then
    finds the validation users as the run's held-out users present in it."""
    test = _test_users(data)
    write_jsonl(dest / "users.jsonl", [u for u in data.users.values() if u.user_id not in test])
    write_jsonl(dest / "prefs.jsonl", [r for r in data.prefs if r.user_id not in test])
    return dest


def _link_files(source: Path, dest: Path) -> None:
    """Hard-link ``source``'s files into ``dest`` (no copy of the weights; they outlive a deleted
    checkpoint), copying where the file system cannot link. The run record is left out."""
    for f in source.iterdir():
        if f.is_file() and f.name != RUN_FILE:
            try:
                os.link(f, dest / f.name)
            except OSError:
                shutil.copy2(f, dest / f.name)


def candidates(run: Path, record: RunRecord, work: Path) -> list[Candidate]:
    """The last stage's kept checkpoints and its final model, each as a model folder with the record."""
    last = list(record.stages)[-1]
    stage_final = run / record.stages[last]
    stage_dir = stage_final.parent
    found = []
    for c in ckpt.checkpoint_dirs(stage_dir):
        step = ckpt.read_state(c)["step"]
        found.append(Candidate(step, _model_view(c, record, work / f"step-{step:06d}", run), c))
    if not (run / FINAL_DIR / "config.json").exists():
        raise FspoError(f"{run}: the run has no {FINAL_DIR}/ model (did training finish?)")
    steps = int(record.config.get("optim", {}).get("steps" if last != "sft" else "sft_steps", 0) or 0)
    found.append(Candidate(steps, run / FINAL_DIR, stage_final))
    return found


def _model_view(source: Path, record: RunRecord, dest: Path, run: Path) -> Path:
    """``dest``: ``source``'s model files plus the run record relocated there."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _link_files(source, dest)
    record.relocated(str(dest.relative_to(run))).write(dest)
    return dest


def select_checkpoint(cfg: SelectConfig) -> dict:
    """Judge every candidate on the validation users; link the best as ``RUN/selected``; return the table."""
    from fspo.eval.config import EvalConfig
    from fspo.eval.runner import run_eval

    run = Path(cfg.run)
    record = read_record(run)
    if record is None or (run / "config.json").exists():
        raise FspoError(f"{run}: not a training run folder (no {RUN_FILE})")
    data_path = cfg.data or str(record.config.get("data", {}).get("path", ""))
    data = load_data(data_path)
    users = validation_users(record, data)
    if not users:
        raise FspoError(
            f"{run}: no validation users: every user the run held out is a test user of {data_path}; "
            "train with --data.heldout_users F to set training users aside for selection"
        )
    method = METHOD_OF_LAYOUT.get(record.layout)
    if method is None:
        raise FspoError(f"{run}: layout {record.layout} has no eval row to select by")
    work = run / SELECT_DIR
    view = validation_view(data, work / "data")
    found = candidates(run, record, work / "candidates")
    if len(found) < 2:
        print(
            f"select: only the final model to judge ({run}/stages/*/checkpoints has no kept checkpoint; "
            "train with --keep_checkpoints_after_finish true)"
        )
    rows = []
    for c in found:
        result = run_eval(
            EvalConfig(
                data=str(view),
                methods=["base", method],
                model=str(c.folder),
                judge=cfg.judge,
                judge_model=cfg.judge_model,
                users=cfg.users,
                queries=cfg.queries,
                reward_accuracy=False,
                heldout_questions=False,
                max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed,
                out=str(work / "eval"),  # one folder, one call cache: the base answers are made once
                progress=cfg.progress,
            )
        )
        report_dir = work / "reports" / f"step-{c.step:06d}"
        report_dir.mkdir(parents=True, exist_ok=True)
        for name in ("eval.json", "report.md", "generations.jsonl"):
            if (work / "eval" / name).exists():
                shutil.copy2(work / "eval" / name, report_dir / name)
        evaluated = sorted({u for u in result["win_rate"][method]["per_user"]})
        if not set(evaluated) <= set(users):  # never a test user (nor a training user)
            raise FspoError(f"selection evaluated users outside the validation set: {evaluated}")
        wr, quality = result["win_rate"][method], result["methods"][method].get("quality") or {}
        rows.append(
            {
                "step": c.step,
                "source": str(c.source),
                "win_rate": wr["win_rate"],
                "ci": wr["ci"],
                "n": wr["n"],
                "acceptable": quality.get("acceptable"),
                "on_topic": quality.get("on_topic"),
                "degenerate": quality.get("degenerate"),
                "samples": quality.get("samples", []),
                "users": evaluated,
            }
        )
        print(
            f"select: step {c.step}: win rate vs base {100 * wr['win_rate']:.1f}% (n={wr['n']}), "
            f"acceptable {100 * (quality.get('acceptable') or 0):.0f}%"
        )
    # highest win rate; then more acceptable answers; then the later step (less to explain)
    best = max(rows, key=lambda r: (r["win_rate"], r["acceptable"] or 0.0, r["step"]))
    chosen = next(c for c in found if c.step == best["step"])
    _link_selected(run, dataclasses.replace(record, selected_on=tuple(users)), chosen)
    summary = {
        "selected_step": best["step"],
        "selected": str(run / SELECTED_DIR),
        "validation_users": users,
        "judge": cfg.judge,
        "rule": "highest win rate vs base on validation users; ties: more acceptable answers, then the later step",
        "candidates": rows,
    }
    write_text_atomic(work / "selection.json", json.dumps(summary, indent=2))
    write_text_atomic(run / SELECTED_DIR / "selection.json", json.dumps(summary, indent=2))
    print(f"select: step {best['step']} -> {run / SELECTED_DIR}")
    return summary


def _link_selected(run: Path, record: RunRecord, chosen: Candidate) -> None:
    """``RUN/selected``: the chosen model's files and the record, swapped in by renames."""
    tmp, old, dest = run / f".{SELECTED_DIR}.tmp", run / f".{SELECTED_DIR}.old", run / SELECTED_DIR
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir()
    _link_files(chosen.source, tmp)
    record.relocated(SELECTED_DIR).write(tmp)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)
