"""Dataclass configs: loadable from YAML, overridable with dotted ``section.field=value`` pairs.

Every field carries ``metadata={"help": ...}`` so ``--help`` documents every option; the same
dataclass is the YAML schema, the CLI, and what a run records in ``fspo_run.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fspo.errors import FspoError

T = TypeVar("T")


def opt(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with a help string (shown by ``--help`` and in docs)."""
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _leaf_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; plain types pass through."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    nullable = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and nullable):
        if not nullable:
            raise FspoError(f"{where}: must not be null")
        return None
    leaf = _leaf_type(tp)
    try:
        if leaf is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if leaf in (int, float, str):
            if leaf is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return (
                leaf(float(value)) if leaf is int and isinstance(value, str) and "e" in value.lower() else leaf(value)
            )
    except (TypeError, ValueError):
        raise FspoError(f"{where}: expected {getattr(leaf, '__name__', leaf)}, got {value!r}") from None
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a (nested) dataclass from a dict, rejecting unknown keys with their dotted name."""
    if not isinstance(data, dict):
        raise FspoError(f"{where}: expected a mapping")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise FspoError(f"{where}.{key}: unknown option (known: {', '.join(fields)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, tp, f"{where}.{key}")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise FspoError(f"{dotted}: {k} is not a section")
    node[keys[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults <- YAML file <- overrides (dotted keys)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FspoError(f"{p}: no such config file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise FspoError(f"{p}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, dict):
            raise FspoError(f"{p}: expected a mapping at the top level")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(cls, data, where=str(path) if path else "config")


def iter_leaves(cls: type, prefix: str = ""):
    """Yield ``(dotted_name, field, type)`` for every leaf option of a nested dataclass."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from iter_leaves(tp, name + ".")
        else:
            yield name, f, tp


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, aliases: dict[str, str] | None = None) -> None:
    """One ``--section.field`` flag per leaf option (plus short aliases), all defaulting to unset."""
    aliases = aliases or {}
    reverse = {v: k for k, v in aliases.items()}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f, tp in iter_leaves(cls):
        section = name.split(".")[0] if "." in name else "run"
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if name in reverse:
            flags.insert(0, f"--{reverse[name]}")
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "") + f" (default: {default})"
        leaf = _leaf_type(tp)
        metavar = "BOOL" if leaf is bool else getattr(leaf, "__name__", "VALUE").upper()
        group.add_argument(
            *flags,
            dest=f"cfg:{name}",
            default=None,
            metavar=metavar,
            help=help_text,
            choices=choices if choices and leaf is not bool else None,
        )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}
    for item in getattr(args, "overrides", None) or []:
        if "=" not in item:
            raise FspoError(f"override {item!r}: expected section.field=value")
        key, value = item.split("=", 1)
        out[key] = value
    return out
