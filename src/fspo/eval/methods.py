"""The paper's rows as named methods: which model answers, under which prompt layout.

A method is a (layout, model role) pair. ``base``/``fewshot``/``oracle`` run the base model;
the others need a model trained by ``fspo train`` (how to make each: docs/evaluation.md).
A trained model's run record (:mod:`fspo.data.runs`) also gives the reference model of the
implicit reward and the log-prob reduction used in training, so reward accuracy matches what the
model was optimized for.
"""

from __future__ import annotations

from dataclasses import dataclass

from fspo.data.prompts import FSPO, ORACLE, RAT, ZEROSHOT, Layout
from fspo.data.runs import ResolvedModel, resolve_model
from fspo.errors import FspoError


@dataclass(frozen=True)
class Method:
    name: str
    prompt_layout: Layout  # prompt layout for generation and scoring
    trained: bool  # needs a trained model (else the base model)
    help: str

    @property
    def layout(self) -> str:
        return self.prompt_layout.name


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("base", ZEROSHOT, False, "base model, zero-shot"),
        Method("fewshot", FSPO, False, "base model prompted with the N shots (FSPO layout)"),
        Method("prefft", FSPO, True, "SFT on the few-shot context (fspo train --loss sft)"),
        Method("pooled", ZEROSHOT, True, "IPO on all users' pairs without context (--layout zeroshot --shots 0)"),
        Method("fspo-dpo", FSPO, True, "FSPO with DPO (--loss sft+dpo)"),
        Method("fspo-ipo", FSPO, True, "FSPO with IPO (--loss sft+ipo or ipo)"),
        Method("fspo-rat", RAT, True, "FSPO with a rationalized user description (--layout rat --loss sft+ipo)"),
        Method("oracle", ORACLE, False, "gold user description in the prompt (base model, or --method-model)"),
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


def assign_models(
    methods: list[str], base_model: str, model: str | None, method_models: dict[str, str]
) -> dict[str, ResolvedModel]:
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
        out[name] = resolve_model(spec, must_exist=False)
    return out


def layout_warnings(assigned: dict[str, ResolvedModel]) -> list[str]:
    """Rows whose trained model was trained under another layout than the row uses (allowed, but said)."""
    out = []
    for name, info in assigned.items():
        want = METHODS[name].layout
        if info.trained and info.layout != want:
            out.append(f"{name}: model {info.spec} was trained with layout {info.layout!r}, evaluated with {want!r}")
    return out
