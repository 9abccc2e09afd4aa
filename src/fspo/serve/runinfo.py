"""Resolve ``--model`` to what serving needs: where the weights are and how prompts were laid out.

A training run folder (``fspo train`` output) carries ``fspo_run.json``; serving must use the same
layout, shot count, chat wrapping and length limit the model was trained with, or it sees prompts
it never learned. Plain model folders and presets get the defaults below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fspo.data.prompts import check_layout
from fspo.errors import FspoError

DEFAULT_LAYOUT = "fspo"
DEFAULT_SHOTS = 4
DEFAULT_MAX_LENGTH = 2048
RUN_FILE = "fspo_run.json"


@dataclass(frozen=True)
class RunInfo:
    """A loadable model spec plus the prompt settings it was trained with."""

    spec: str
    layout: str = DEFAULT_LAYOUT
    n_shots: int = DEFAULT_SHOTS
    chat_template: bool = False
    max_length: int = DEFAULT_MAX_LENGTH
    source: str = "defaults"


def resolve_run(model: str, layout: str | None = None, n_shots: int | None = None) -> RunInfo:
    """Accept a run folder (uses ``final/`` and ``fspo_run.json``), a model folder, or a preset.

    ``layout`` / ``n_shots`` override what the run recorded (useful for ablations, at your own risk).
    """
    path = Path(model)
    meta: dict = {}
    spec = model
    source = "defaults"
    if (path / RUN_FILE).exists():
        try:
            meta = json.loads((path / RUN_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FspoError(f"{path / RUN_FILE}: cannot read run metadata: {exc}") from None
        if not isinstance(meta, dict):
            raise FspoError(f"{path / RUN_FILE}: expected a JSON object")
        final = path / "final"
        if not final.is_dir():
            raise FspoError(f"{path}: run folder has no final/ checkpoint (did training finish?)")
        spec = str(final)
        source = str(path / RUN_FILE)
    elif model not in ("tiny", "smollm2") and not path.is_dir():
        raise FspoError(f"{model}: not a run folder, model folder, or preset ('tiny', 'smollm2')")
    chosen_layout = layout or meta.get("layout") or DEFAULT_LAYOUT
    try:
        check_layout(chosen_layout)
    except ValueError as exc:
        raise FspoError(str(exc)) from None
    if chosen_layout == "oracle":
        raise FspoError(
            "the oracle layout needs each user's gold description, which serving does not have; "
            "use --layout fspo or rat"
        )
    shots = n_shots if n_shots is not None else int(meta.get("n_shots") or DEFAULT_SHOTS)
    if shots < 0:
        raise FspoError(f"n_shots must be >= 0, got {shots}")
    return RunInfo(
        spec=spec,
        layout=chosen_layout,
        n_shots=shots,
        chat_template=bool(meta.get("chat_template", False)),
        max_length=int(meta.get("max_length") or DEFAULT_MAX_LENGTH),
        source=source,
    )
