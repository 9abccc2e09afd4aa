"""Checkpoints in Hugging Face format, written atomically, found again after a kill -9.

A checkpoint folder ``step-000040/`` holds the model (``save_pretrained``; adapters only for
LoRA), accelerate's training state (``optimizer.bin``, ``scheduler.bin`` and one
``random_states_<rank>.pkl`` per process, from ``Accelerator.save_state``; under FSDP also
accelerate's own copy of the model) and ``trainer_state.json``. It is written under a temporary
name and renamed when complete, so a folder named ``step-*`` is always whole. Under
``accelerate launch`` every process writes its part into the same temporary folder
(:func:`shared_atomic_dir`) and the main process renames it once all have finished.

Also what a run folder holds (:data:`RUN_ENTRIES`), so that ``--overwrite`` deletes a previous
run's files and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from fspo.data.io import atomic_dir
from fspo.data.runs import FINAL_DIR, RUN_FILE
from fspo.errors import FspoError

STATE_FILE = "trainer_state.json"
STAGES = ("sft", "dpo", "ipo")
# Everything fspo train writes into a run folder (and, with a leading dot, its temporary names).
# The folder lock (``.fspo.lock``) is not one of them: it belongs to whoever holds it.
RUN_ENTRIES = (
    "fspo_fingerprint.json",
    RUN_FILE,
    "heldout_users.jsonl",
    "metrics.jsonl",
    "checkpoints",
    FINAL_DIR,
    *STAGES,
    *(f"fspo-{stage}" for stage in STAGES),  # tensorboard logs
)


def shared_atomic_dir(accelerator, final: Path, write: Callable[[Path], None]) -> Path:
    """:func:`atomic_dir` for every process of an ``accelerate launch``: the main process creates
    the temporary folder and sends its name to the others, every process calls ``write(tmp)``
    (collectives such as gathering an FSDP state dict need them all), and the main process renames
    the folder once all have returned. In one process this is :func:`atomic_dir`."""
    if accelerator.num_processes == 1:
        return atomic_dir(final, write)
    from accelerate.utils import broadcast_object_list

    def together(tmp: Path | None) -> None:
        tmp = Path(broadcast_object_list([str(tmp) if tmp is not None else None])[0])
        write(tmp)
        accelerator.wait_for_everyone()  # every process's files are in tmp before it is renamed

    if accelerator.is_main_process:
        atomic_dir(final, together)
    else:
        together(None)
    accelerator.wait_for_everyone()  # no process goes on before the folder has its final name
    return final


def checkpoint_dirs(stage_dir: Path) -> list[Path]:
    root = stage_dir / "checkpoints"
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step-\d+", p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(stage_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(stage_dir)
    return dirs[-1] if dirs else None


def read_state(ckpt: Path) -> dict:
    """The checkpoint's trainer state (``{"step": N}``); a damaged one is a one-line error."""
    try:
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 1:
            raise ValueError("no step")
    except (OSError, ValueError) as exc:
        raise FspoError(
            f"{ckpt / STATE_FILE}: damaged ({exc}); delete {ckpt} to resume from an older checkpoint, "
            "or use --overwrite"
        ) from None
    return state


def prune(stage_dir: Path, keep: int) -> None:
    for old in checkpoint_dirs(stage_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def remove_all(stage_dir: Path) -> None:
    """Delete a stage's resume checkpoints (called once its final model is written)."""
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)


def link_tree(src: Path, dst: Path) -> None:
    """Copy a folder using hard links where possible (a final model is hundreds of MB)."""

    def write(tmp: Path) -> None:
        for f in src.rglob("*"):
            if f.is_file():
                target = tmp / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copy2(f, target)

    atomic_dir(dst, write)


def run_entries(out: Path) -> list[str]:
    """The names in ``out`` that a training run writes (empty: no run there)."""
    return [name for name in RUN_ENTRIES if os.path.lexists(out / name)]


def remove_run(out: Path) -> list[str]:
    """Delete a previous run's files from ``out`` (only the names fspo train writes); return them."""
    removed = []
    if not out.is_dir():
        return removed
    for entry in sorted(out.iterdir()):
        ours = entry.name in RUN_ENTRIES or any(entry.name.startswith(f".{name}.") for name in RUN_ENTRIES)
        if not ours:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed
