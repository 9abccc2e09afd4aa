"""A domain, read from YAML: user attribute axes, where questions come from, how responses are steered.

Three presets ship with the package (``reviews``, ``elix``, ``roleplay``); any other YAML file with
the same fields defines a new domain. Problems are reported as one line naming file and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fspo.errors import FspoError

PRESETS = ("reviews", "elix", "roleplay")
QUESTION_SOURCES = ("items", "list", "file", "generate")
RESPONSE_SOURCES = ("templates", "steered", "views")
LABELERS = ("attribute", "judge")
PAIR_MODES = ("shared", "matched")


@dataclass
class Axis:
    name: str
    values: list[str]
    describe: dict[str, str] = field(default_factory=dict)
    steer: dict[str, str] = field(default_factory=dict)

    def phrase(self, value: str) -> str:
        return self.describe.get(value, value)


@dataclass
class Domain:
    name: str
    description: str
    axes: dict[str, Axis]
    persona: dict[str, Any]
    questions: dict[str, Any]
    responses: dict[str, Any]
    labeler: str
    pairs_per_question: int = 1
    pair_mode: str = "shared"
    refine: dict[str, Any] = field(default_factory=dict)
    templates: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def response_source(self) -> str:
        return self.responses.get("source", "steered")

    @property
    def steer_axes(self) -> list[str]:
        return list(self.responses.get("steer_axes", []))


def _need(obj: dict, key: str, typ: type | tuple, where: str, path: str) -> Any:
    if key not in obj:
        raise FspoError(f"{path}: {where}{key}: missing required field")
    value = obj[key]
    if not isinstance(value, typ):
        kind = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise FspoError(f"{path}: {where}{key}: expected {kind}, got {type(value).__name__}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], field_name: str, path: str) -> str:
    if value not in allowed:
        raise FspoError(f"{path}: {field_name}: must be one of {', '.join(allowed)}, got {value!r}")
    return value


def parse_domain(raw: Any, path: str) -> Domain:
    """Check a decoded YAML document and build a :class:`Domain`."""
    if not isinstance(raw, dict):
        raise FspoError(f"{path}: <document>: expected a mapping of domain fields")
    name = str(_need(raw, "name", str, "", path))
    axes_raw = _need(raw, "axes", dict, "", path)
    if not axes_raw:
        raise FspoError(f"{path}: axes: needs at least one user attribute axis")
    axes: dict[str, Axis] = {}
    for axis_name, spec in axes_raw.items():
        if not isinstance(spec, dict):
            raise FspoError(f"{path}: axes.{axis_name}: expected a mapping with 'values'")
        values = _need(spec, "values", list, f"axes.{axis_name}.", path)
        if len(values) < 2 or not all(isinstance(v, str) and v for v in values):
            raise FspoError(f"{path}: axes.{axis_name}.values: needs at least two non-empty strings")
        for opt in ("describe", "steer"):
            if not isinstance(spec.get(opt, {}), dict):
                raise FspoError(f"{path}: axes.{axis_name}.{opt}: expected a mapping value -> text")
        axes[str(axis_name)] = Axis(
            str(axis_name), list(values), dict(spec.get("describe", {})), dict(spec.get("steer", {}))
        )
    persona = raw.get("persona") or {}
    if not isinstance(persona, dict):
        raise FspoError(f"{path}: persona: expected a mapping")
    core = persona.get("core", "")
    for axis_name in axes:
        if core and "{" + axis_name + "}" not in core:
            raise FspoError(f"{path}: persona.core: does not mention {{{axis_name}}}")
    questions = _need(raw, "questions", dict, "", path)
    source = _choice(questions.get("source"), QUESTION_SOURCES, "questions.source", path)
    if source in ("items", "list") and not isinstance(questions.get("items"), list):
        raise FspoError(f"{path}: questions.items: a list is required when questions.source is {source}")
    for i, it in enumerate(questions.get("items") or []):
        ok = isinstance(it, str) or (source == "items" and isinstance(it, dict) and isinstance(it.get("item"), str))
        if not ok:
            raise FspoError(
                f"{path}: questions.items[{i}]: expected a string"
                + (" or a mapping with an 'item' string" if source == "items" else "")
            )
    if source == "items" and "{item}" not in str(questions.get("template", "")):
        raise FspoError(f"{path}: questions.template: must contain {{item}}")
    if source == "file" and not questions.get("file"):
        raise FspoError(f"{path}: questions.file: a path is required when questions.source is file")
    responses = _need(raw, "responses", dict, "", path)
    rsource = _choice(responses.get("source"), RESPONSE_SOURCES, "responses.source", path)
    for axis_name in responses.get("steer_axes", []):
        if axis_name not in axes:
            raise FspoError(f"{path}: responses.steer_axes: unknown axis {axis_name!r}")
    templates = raw.get("templates") or {}
    if rsource == "templates":
        from fspo.synth.templates import check_templates

        if source != "items":
            raise FspoError(f"{path}: responses.source: templates need questions.source items")
        check_templates(templates, path)
        for i, it in enumerate(questions["items"]):
            kind = it.get("kind") if isinstance(it, dict) else None
            if kind not in templates["kinds"]:
                raise FspoError(
                    f"{path}: questions.items[{i}].kind: templated responses need one of "
                    f"{', '.join(templates['kinds'])}, got {kind!r}"
                )
    variants = responses.get("variants", 1)
    if not isinstance(variants, int) or isinstance(variants, bool) or variants < 1:
        raise FspoError(f"{path}: responses.variants: expected a positive integer, got {variants!r}")
    labeler = _choice(raw.get("labeler", "judge"), LABELERS, "labeler", path)
    pair_mode = _choice(raw.get("pair_mode", "shared"), PAIR_MODES, "pair_mode", path)
    pairs = raw.get("pairs_per_question", 1)
    if not isinstance(pairs, int) or pairs < 1:
        raise FspoError(f"{path}: pairs_per_question: expected a positive integer, got {pairs!r}")
    refine = raw.get("refine") or {}
    if not isinstance(refine, dict):
        raise FspoError(f"{path}: refine: expected a mapping")
    return Domain(
        name=name,
        description=str(raw.get("description", "")),
        axes=axes,
        persona=persona,
        questions=questions,
        responses=responses,
        labeler=labeler,
        pairs_per_question=pairs,
        pair_mode=pair_mode,
        refine=refine,
        templates=templates,
        path=path,
    )


def load_domain(name_or_path: str) -> Domain:
    """A preset by name or a YAML file by path."""
    if name_or_path in PRESETS:
        ref = resources.files("fspo.synth") / "domains" / f"{name_or_path}.yaml"
        text, path = ref.read_text(encoding="utf-8"), f"{name_or_path}.yaml"
    else:
        p = Path(name_or_path)
        if not p.exists():
            raise FspoError(f"{name_or_path}: no such domain: use {', '.join(PRESETS)} or a YAML file")
        text, path = p.read_text(encoding="utf-8"), str(p)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise FspoError(f"{path}{where}: <yaml>: {getattr(exc, 'problem', None) or exc}") from None
    domain = parse_domain(raw, path)
    if domain.questions.get("source") == "file":
        qfile = Path(domain.questions["file"])
        if not qfile.is_absolute() and name_or_path not in PRESETS:
            domain.questions["file"] = str(Path(name_or_path).parent / qfile)
    return domain
