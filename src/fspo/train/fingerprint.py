"""What a run's weights depend on, so that a rerun into the same ``--out`` continues only the same run.

``fspo train`` writes ``fspo_fingerprint.json`` into the run folder before anything else (so a run
killed before its first checkpoint has one) and copies its digest into the run record. A rerun
computes the fingerprint again and compares it key by key: equal, it resumes (or says the run is
finished); different, it refuses and names what changed, unless ``--overwrite`` starts over.

The fingerprint holds
- every option that changes the weights, as dotted keys (``optim.lr``, ``data.shots``, ``seed``...);
  the options in :data:`RUN_OPTIONS` only change where and how often things are written or shown,
  and are left out, so a resumed run may checkpoint, log or evaluate at another pace;
- the data: a hash of the loaded preference and user records (not of the path, nor of the file's
  bytes: the same records moved or converted to Parquet are the same data);
- the starting model and the reference: the preset name, or a hash of the model folder's files
  (small files whole, large weight files sampled at fixed offsets, so retrained weights differ and a
  copied folder does not).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fspo.data.io import write_text_atomic
from fspo.errors import FspoError, printable

FINGERPRINT_FILE = "fspo_fingerprint.json"
FORMAT = 1

# Options that do not change the weights: where and how often the run writes, logs, evaluates and
# shows progress. ``model.gradient_checkpointing`` recomputes the same activations (less memory,
# same numbers), so a run that ran out of memory can resume with it.
RUN_OPTIONS = frozenset(
    {
        "out",
        "overwrite",
        "progress",
        "log_every",
        "eval_every",
        "save_every",
        "keep_checkpoints",
        "keep_checkpoints_after_finish",
        "report_to",
        "data.eval_episodes",
        "model.gradient_checkpointing",
    }
)
# Options whose value is a name for something the fingerprint identifies by content instead.
IDENTITY_OPTIONS = frozenset({"data.path", "model.name", "model.ref"})

_WHOLE_FILE = 8 << 20  # files up to 8 MiB are hashed whole
_CHUNK = 1 << 20  # larger ones: 8 chunks of 1 MiB at evenly spaced offsets, first and last included
_CHUNKS = 8


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-4}}`` -> ``{"optim.lr": 1e-4}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def result_options(config: dict[str, Any]) -> dict[str, Any]:
    """The options of a (nested) config dict that change the weights, as dotted keys."""
    flat = flatten(config)
    return {k: v for k, v in sorted(flat.items()) if k not in RUN_OPTIONS and k not in IDENTITY_OPTIONS}


def _sample(path: Path, h) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as fh:
        if size <= _WHOLE_FILE:
            h.update(fh.read())
            return
        for i in range(_CHUNKS):
            fh.seek((size - _CHUNK) * i // (_CHUNKS - 1))
            h.update(fh.read(_CHUNK))


def model_identity(spec: str | None) -> str | None:
    """``tiny``/``smollm2`` for presets; for a folder (a model, an adapter, or a run's ``final/``) a
    hash of its files. The run record and hidden files are left out: rewriting a finished run's
    record does not make its model another model."""
    if spec is None:
        return None
    from fspo.data.runs import PRESETS, RUN_FILE
    from fspo.models.registry import model_dir

    if spec in PRESETS:
        return spec
    folder = model_dir(spec)
    h = hashlib.sha256()
    try:
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name != RUN_FILE:
                _sample(f, h)
    except OSError as exc:
        raise FspoError(f"{folder}: cannot read the model: {exc.strerror or exc}") from None
    return f"sha256:{h.hexdigest()[:32]}"


def data_digest(prefs, users) -> str:
    """A hash of loaded records: preferences in order (their order decides the episodes), users by id."""
    h = hashlib.sha256()
    for rec in prefs:
        h.update(_canonical(rec.to_dict()).encode() + b"\n")
    h.update(b"users\n")
    for user_id in sorted(users):
        h.update(_canonical(users[user_id].to_dict()).encode() + b"\n")
    return f"sha256:{h.hexdigest()[:32]}"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    if isinstance(value, str):
        return printable(value, 80)
    return printable(json.dumps(value), 80)


@dataclass(frozen=True)
class Fingerprint:
    """The identity of a run's result. ``config`` holds :func:`result_options`; the ``*_spec``
    fields only name things in messages (a moved data folder is the same data)."""

    config: dict[str, Any]
    data: str
    model: str | None
    ref: str | None = None
    data_spec: str = ""
    model_spec: str = ""
    ref_spec: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, cfg, data_digest: str) -> Fingerprint:
        defaults = result_options(dataclasses.asdict(type(cfg)()))
        return cls(
            config=result_options(dataclasses.asdict(cfg)),
            data=data_digest,
            model=model_identity(cfg.model.name),
            ref=model_identity(cfg.model.ref),
            data_spec=cfg.data.path,
            model_spec=cfg.model.name,
            ref_spec=cfg.model.ref,
            defaults=defaults,
        )

    @property
    def digest(self) -> str:
        key = {"config": self.config, "data": self.data, "model": self.model, "ref": self.ref}
        return hashlib.sha256(_canonical(key).encode()).hexdigest()

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "fingerprint": self.digest,
            "config": self.config,
            "data": {"digest": self.data, "path": self.data_spec},
            "model": {"identity": self.model, "spec": self.model_spec},
            "ref": {"identity": self.ref, "spec": self.ref_spec},
        }
        return json.dumps(body, indent=2, ensure_ascii=False, default=str) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        body = json.loads(text)
        if not isinstance(body, dict) or not isinstance(body.get("config"), dict):
            raise ValueError("not an fspo fingerprint")
        data, model, ref = body.get("data") or {}, body.get("model") or {}, body.get("ref") or {}
        return cls(
            config=body["config"],
            data=data.get("digest", ""),
            model=model.get("identity"),
            ref=ref.get("identity"),
            data_spec=data.get("path", ""),
            model_spec=model.get("spec", ""),
            ref_spec=ref.get("spec"),
        )

    def write(self, folder: Path) -> None:
        write_text_atomic(folder / FINGERPRINT_FILE, self.to_json())

    def differences(self, old: Fingerprint) -> list[str]:
        """What changed from ``old`` to this one, one ``key: old -> new`` item per difference.

        A key that ``old`` lacks (an option added in a later fspo) counts as unchanged while it
        holds its default; a key that this one lacks (an option since removed) is ignored."""
        out = []
        for key, new in self.config.items():
            if key in old.config:
                if old.config[key] != new:
                    out.append(f"{key}: {_show(old.config[key])} -> {_show(new)}")
            elif key in self.defaults and new != self.defaults[key]:
                out.append(f"{key}: (unset) -> {_show(new)}")
        if old.data != self.data:
            moved = f" ({_show(old.data_spec)} -> {_show(self.data_spec)})" if old.data_spec != self.data_spec else ""
            out.append(f"data: changed{moved}")
        for name, was, now, was_spec, now_spec in (
            ("model.name", old.model, self.model, old.model_spec, self.model_spec),
            ("model.ref", old.ref, self.ref, old.ref_spec, self.ref_spec),
        ):
            if was != now:
                if was_spec != now_spec:
                    out.append(f"{name}: {_show(was_spec)} -> {_show(now_spec)}")
                else:
                    out.append(f"{name}: {_show(now_spec)} has other weights now")
        return out

    def legacy_differences(self, config: dict[str, Any], cfg_dict: dict[str, Any]) -> list[str]:
        """Differences from a run recorded before fingerprints: only its config is known, so the
        data path and model names are compared as names."""
        old, new = flatten(config), flatten(cfg_dict)
        keys = [k for k in new if k not in RUN_OPTIONS]
        out = []
        for key in keys:
            if key in old and old[key] != new[key]:
                out.append(f"{key}: {_show(old[key])} -> {_show(new[key])}")
            elif key not in old and key in self.defaults and new[key] != self.defaults[key]:
                out.append(f"{key}: (unset) -> {_show(new[key])}")
        return out


def read_fingerprint(folder: Path) -> Fingerprint | None:
    path = folder / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        return Fingerprint.from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError, TypeError) as exc:
        raise FspoError(f"{path}: cannot read ({exc}); use --overwrite to start over") from None
