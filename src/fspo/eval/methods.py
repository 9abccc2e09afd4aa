"""The paper's rows as named methods: which model answers, under which prompt layout.

A method is a (layout, model role) pair. ``base``/``fewshot``/``oracle`` run the base model;
the others need a model trained by ``fspo train`` (how to make each: docs/evaluation.md).
Run folders also tell us the reference model of the implicit reward and the log-prob reduction
used in training, so reward accuracy matches what the model was optimized for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fspo.errors import FspoError


@dataclass(frozen=True)
class Method:
    name: str
    layout: str  # prompt layout for generation and scoring (fspo.data.prompts.LAYOUTS)
    trained: bool  # needs a trained model (else the base model)
    help: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("base", "zeroshot", False, "base model, zero-shot"),
        Method("fewshot", "fspo", False, "base model prompted with the N shots (FSPO layout)"),
        Method("prefft", "fspo", True, "SFT on the few-shot context (fspo train --loss sft)"),
        Method("pooled", "zeroshot", True, "IPO on all users' pairs without context (--layout zeroshot --shots 0)"),
        Method("fspo-dpo", "fspo", True, "FSPO with DPO (--loss sft+dpo)"),
        Method("fspo-ipo", "fspo", True, "FSPO with IPO (--loss sft+ipo or ipo)"),
        Method("fspo-rat", "rat", True, "FSPO with a rationalized user description (--layout rat --loss sft+ipo)"),
        Method("oracle", "oracle", False, "gold user description in the prompt (base model, or --method-model)"),
    )
}


def parse_methods(text: str | list[str]) -> list[str]:
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    for n in names:
        if n not in METHODS:
            raise FspoError(f"unknown method {n!r}; choose from {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise FspoError(f"duplicate method in {names}")
    return names


@dataclass(frozen=True)
class ModelInfo:
    """A loadable model plus what scoring needs: its reference model and reduction (None if untrained)."""

    spec: str
    reference: str | None = None
    reduction: str = "mean"
    n_shots: int | None = None
    layout: str | None = None
    chat_template: bool = False
    max_length: int | None = None
    base_model: str | None = None
    heldout_users: tuple[str, ...] | None = None  # users the run never trained on


def _stage_path(run: Path, recorded: str, stage: str) -> str:
    """Stage folders are recorded as given at training time (maybe relative to another cwd)."""
    if Path(recorded).exists():
        return recorded
    guess = run / stage / "final"
    return str(guess) if guess.exists() else recorded


def model_info(spec: str) -> ModelInfo:
    """Resolve a model spec; a run folder (``fspo_run.json``) also yields its reference and reduction.

    Reference of the implicit reward = the model training started from: the SFT stage's final
    model in two-stage runs (``sft+ipo``), otherwise ``model.ref`` or ``model.name`` of the config.
    """
    run = Path(spec)
    meta_path = run / "fspo_run.json"
    if not meta_path.exists():
        return ModelInfo(spec=spec)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FspoError(f"{meta_path}: cannot read run metadata: {exc}") from None
    cfg = meta.get("config") or {}
    model_cfg = cfg.get("model") or {}
    stages = meta.get("stages") or {}
    base = meta.get("base_model") or model_cfg.get("name")
    if len(stages) > 1 and "sft" in stages:
        ref = _stage_path(run, stages["sft"], "sft")
    else:
        ref = model_cfg.get("ref") or base
    return ModelInfo(
        spec=str(run),
        reference=ref,
        reduction=(cfg.get("loss") or {}).get("reduction", "mean"),
        n_shots=meta.get("n_shots"),
        layout=meta.get("layout"),
        chat_template=bool(meta.get("chat_template", False)),
        max_length=meta.get("max_length"),
        base_model=base,
        heldout_users=tuple(meta["heldout_users"]) if isinstance(meta.get("heldout_users"), list) else None,
    )


def assign_models(
    methods: list[str], base_model: str, model: str | None, method_models: dict[str, str]
) -> dict[str, ModelInfo]:
    """Which model each method runs: ``--method-model NAME=PATH`` first, then ``--model`` for
    trained rows, then the base model for untrained rows (``base`` always uses the base model)."""
    unknown = set(method_models) - set(METHODS)
    if unknown:
        raise FspoError(f"--method-model names unknown methods: {', '.join(sorted(unknown))}")
    out = {}
    for name in methods:
        m = METHODS[name]
        if name in method_models:
            spec = method_models[name]
        elif m.trained:
            if not model:
                raise FspoError(f"method {name!r} needs a trained model: pass --model RUN or --method-model {name}=RUN")
            spec = model
        else:
            spec = base_model
        out[name] = model_info(spec)
    return out


def layout_warnings(assigned: dict[str, ModelInfo]) -> list[str]:
    """Rows whose trained model was trained under another layout than the row uses (allowed, but said)."""
    out = []
    for name, info in assigned.items():
        want = METHODS[name].layout
        if info.layout and info.layout != want:
            out.append(f"{name}: model {info.spec} was trained with layout {info.layout!r}, evaluated with {want!r}")
    return out
