"""The run record: what a trained model needs to be prompted as it was trained.

``fspo train`` writes one :class:`RunRecord` as ``fspo_run.json`` into the run folder *and* into
``final/``, so a model folder describes itself even when copied away from its run. eval, serve,
personalize and study read it through :func:`resolve_model`; no other module reads the file.

The token budget has one meaning everywhere: ``max_length`` is the number of tokens of one
sequence, prompt plus answer. Training keeps prompt + the longer completion within it; generation
keeps prompt + ``max_new_tokens`` within it. Both drop whole shots, oldest first, to fit
(:func:`fspo.data.truncation.fit_shots`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fspo.data.io import write_text_atomic
from fspo.data.prompts import LAYOUTS, layout_of
from fspo.errors import FspoError

RUN_FILE = "fspo_run.json"
FINAL_DIR = "final"
PRESETS = ("tiny", "smollm2")

# The one place each default lives (train's config, eval and serve all read these).
DEFAULT_LAYOUT = "fspo"
DEFAULT_SHOTS = 4
DEFAULT_MAX_LENGTH = 1024
DEFAULT_REDUCTION = "mean"
REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class RunRecord:
    """How a model was trained, as far as prompting and scoring it depend on it.

    ``reference`` is the model of the implicit reward β·log(π/π_ref) (the SFT stage's final model
    in a two-stage run); like every path in the record it is stored relative to the folder that
    holds the record when it lies inside the run, so a moved run still resolves.
    """

    base_model: str
    layout: str = DEFAULT_LAYOUT
    n_shots: int = DEFAULT_SHOTS
    max_length: int = DEFAULT_MAX_LENGTH
    chat_template: bool = False
    reduction: str = DEFAULT_REDUCTION
    loss: str = "ipo"
    beta: float = 0.1
    reference: str | None = None
    stages: dict[str, str] = field(default_factory=dict)
    heldout_users: tuple[str, ...] = ()
    selected_on: tuple[str, ...] = ()  # users ``fspo select`` chose this checkpoint on: evals leave them out
    fingerprint: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data_summary: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    fspo_version: str = ""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if not isinstance(self.n_shots, int) or isinstance(self.n_shots, bool) or self.n_shots < 0:
            raise ValueError(f"n_shots: expected an integer >= 0, got {self.n_shots!r}")
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 16:
            raise ValueError(f"max_length: expected an integer >= 16, got {self.max_length!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")
        if not isinstance(self.beta, (int, float)) or not math.isfinite(self.beta) or self.beta <= 0:
            raise ValueError(f"beta: expected a finite number > 0, got {self.beta!r}")

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["heldout_users"] = list(self.heldout_users)
        data["selected_on"] = list(self.selected_on)
        data["data_summary"] = list(self.data_summary)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> RunRecord:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise FspoError(f"{where}: cannot read run record: {exc}") from None
        if not isinstance(data, dict):
            raise FspoError(f"{where}: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if not isinstance(kwargs.get("base_model"), str):
            raise FspoError(f"{where}: base_model: missing (not a run record written by fspo train?)")
        for key in ("heldout_users", "selected_on", "data_summary"):
            if key in kwargs:
                if not isinstance(kwargs[key], list) or not all(isinstance(x, str) for x in kwargs[key]):
                    raise FspoError(f"{where}: {key}: expected a list of strings")
                kwargs[key] = tuple(kwargs[key])
        for key in ("stages", "config", "metrics"):
            if key in kwargs and not isinstance(kwargs[key], dict):
                raise FspoError(f"{where}: {key}: expected an object")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise FspoError(f"{where}: {exc}") from None

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / RUN_FILE
        write_text_atomic(path, self.to_json())
        return path

    def relocated(self, rel: str) -> RunRecord:
        """The same record as seen from ``rel`` (e.g. ``final``): its relative paths gain ``..``."""
        up = "/".join(".." for _ in Path(rel).parts)

        def move(p: str | None) -> str | None:
            if p is None or Path(p).is_absolute() or p in PRESETS:
                return p
            return f"{up}/{p}"

        return dataclasses.replace(
            self, reference=move(self.reference), stages={k: move(v) for k, v in self.stages.items()}
        )


def read_record(folder: str | Path) -> RunRecord | None:
    """The record in ``folder`` (a run folder or a model folder), or None if there is none."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FspoError(f"{path}: cannot read run record: {exc}") from None
    return RunRecord.from_json(text, str(path))


@dataclass(frozen=True)
class ResolvedModel:
    """A loadable model spec plus how to prompt it: from its run record, else the defaults.

    ``spec`` is what :func:`fspo.models.registry.load_model` takes (a run's ``final/`` folder for
    a run). ``record`` is None for presets and plain model folders; ``source`` says where the
    prompt settings came from, for messages.
    """

    spec: str
    record: RunRecord | None = None
    source: str = "defaults"
    layout: str = DEFAULT_LAYOUT
    n_shots: int = DEFAULT_SHOTS
    max_length: int = DEFAULT_MAX_LENGTH
    chat_template: bool = False

    @property
    def trained(self) -> bool:
        return self.record is not None

    @property
    def reduction(self) -> str:
        return self.record.reduction if self.record else DEFAULT_REDUCTION

    @property
    def reference(self) -> str | None:
        """The implicit reward's reference model (None for an untrained model)."""
        if self.record is None or self.record.reference is None:
            return None
        ref = self.record.reference
        here = Path(self.source).parent
        if not Path(ref).is_absolute() and (here / ref).exists():
            return str((here / ref).resolve())
        return ref

    @property
    def base_model(self) -> str | None:
        return self.record.base_model if self.record else None

    @property
    def heldout_users(self) -> tuple[str, ...] | None:
        return self.record.heldout_users if self.record else None

    @property
    def selected_on(self) -> tuple[str, ...]:
        """Users this checkpoint was chosen on (``fspo select``): a fair evaluation leaves them out."""
        return self.record.selected_on if self.record else ()

    def with_prompting(self, layout: str | None = None, n_shots: int | None = None) -> ResolvedModel:
        """Override the recorded layout or shot count (ablations: the model sees prompts it did not train on)."""
        changes: dict[str, Any] = {}
        if layout is not None:
            changes["layout"] = check_layout_name(layout)
        if n_shots is not None:
            if n_shots < 0:
                raise FspoError(f"shots: expected an integer >= 0, got {n_shots}")
            changes["n_shots"] = n_shots
        return dataclasses.replace(self, **changes)

    def for_serving(self) -> ResolvedModel:
        """This model if a real person can use it: their labeled pairs are all serving has."""
        if not layout_of(self.layout).servable:
            raise FspoError(
                f"the {self.layout} layout needs each user's gold description, which serving does not have; "
                "use --layout fspo or rat"
            )
        return self


def check_layout_name(layout: str) -> str:
    try:
        return layout_of(layout).name
    except ValueError as exc:
        raise FspoError(str(exc)) from None


def resolve_model(spec: str, must_exist: bool = True) -> ResolvedModel:
    """Accept a run folder (its ``final/`` and record), a model folder (with or without a record:
    ``final/`` copied away still knows its layout), or a preset name.

    With ``must_exist`` a spec that is neither a preset nor a folder is an error here, rather than
    a hub lookup that fails later (nothing is downloaded at run time)."""
    path = Path(spec)
    if path.is_dir():
        record = read_record(path)
        if record is not None and not (path / "config.json").exists():
            final = path / FINAL_DIR
            if not (final / "config.json").exists():
                raise FspoError(f"{path}: run folder has no {FINAL_DIR}/ model (did training finish?)")
            return _from_record(str(final), record, str(path / RUN_FILE))
        if record is not None:
            return _from_record(str(path), record, str(path / RUN_FILE))
        return ResolvedModel(spec=str(path))
    if must_exist and spec not in PRESETS:
        raise FspoError(f"{spec}: not a run folder, model folder, or preset ({', '.join(PRESETS)})")
    return ResolvedModel(spec=spec)


def _from_record(spec: str, record: RunRecord, source: str) -> ResolvedModel:
    return ResolvedModel(
        spec=spec,
        record=record,
        source=source,
        layout=record.layout,
        n_shots=record.n_shots,
        max_length=record.max_length,
        chat_template=record.chat_template,
    )
