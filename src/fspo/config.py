"""One config system for every subcommand: dataclasses, YAML, dotted overrides, the CLI.

A config is a dataclass deriving from :class:`Config` whose fields are made with :func:`opt`
(help text, choices, numeric range). The same dataclass is the YAML schema, the ``--section.field``
flags, the Python API and what a run records. Every value is checked in ``__post_init__``, so a
bad value is refused the same way whether it came from the CLI, a YAML file, a dotted override
or Python: one line naming the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fspo.errors import FspoError, show

T = TypeVar("T")

_RANGE_KEYS = ("ge", "gt", "le", "lt")


class ConfigError(FspoError):
    """A value outside its option's type, choices or range; the message starts with the option name."""


def opt(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: typing.Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    required: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field with its help string (shown by ``--help``), allowed choices and range;
    ``required``: the empty default must be replaced (a path every run needs)."""
    meta = {"help": help, "choices": list(choices) if choices is not None else None, "required": required}
    meta |= {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _nullable(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _leaf_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; plain types pass through."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _type_name(tp: Any) -> str:
    leaf = _leaf_type(tp)
    origin = typing.get_origin(leaf)
    if origin is list:
        return f"list of {_type_name(typing.get_args(leaf)[0])}"
    if origin is dict:
        return "NAME=VALUE pairs"
    return getattr(leaf, "__name__", str(leaf))


def _coerce_scalar(value: Any, leaf: Any) -> Any:
    if leaf is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if leaf is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        if isinstance(value, str):
            text = value.strip()
            if len(text) > 30:
                raise ValueError(value)
            return int(float(text)) if ("e" in text.lower() and float(text).is_integer()) else int(text)
        return int(value)
    if leaf is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if leaf is str:
        if isinstance(value, (dict, list)):
            raise ValueError(value)
        return str(value)
    return value


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """A value from YAML or the command line, converted to the field's type (or ConfigError)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null") and _nullable(tp)):
        if not _nullable(tp):
            raise ConfigError(f"{name}: must not be null")
        return None
    leaf = _leaf_type(tp)
    origin = typing.get_origin(leaf)
    try:
        if origin is list:
            (item,) = typing.get_args(leaf)
            items = [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError(value)
            return [_coerce_scalar(x, item) for x in items]
        if origin is dict:
            if isinstance(value, str):
                pairs = [x.partition("=") for x in value.split(",") if x.strip()]
                if any(not sep or not k.strip() or not v.strip() for k, sep, v in pairs):
                    raise ValueError(value)
                value = {k.strip(): v.strip() for k, _, v in pairs}
            if not isinstance(value, dict):
                raise ValueError(value)
            return {str(k): str(v) for k, v in value.items()}
        return _coerce_scalar(value, leaf)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: expected {_type_name(tp)}, got {show(value)}") from None


def _check_value(name: str, value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> None:
    if meta.get("required") and value in ("", None):
        raise ConfigError(f"{name}: required")
    if value is None:
        if not _nullable(tp):
            raise ConfigError(f"{name}: must not be null")
        return
    leaf = _leaf_type(tp)
    if leaf in (int, float, bool, str):
        ok = (
            isinstance(value, bool)
            if leaf is bool
            else isinstance(value, int) and not isinstance(value, bool)
            if leaf is int
            else isinstance(value, (int, float)) and not isinstance(value, bool)
            if leaf is float
            else isinstance(value, str)
        )
        if not ok:
            raise ConfigError(f"{name}: expected {_type_name(tp)}, got {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(map(str, choices))}, got {show(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, test, word in (
            ("ge", lambda v, b: v >= b, ">="),
            ("gt", lambda v, b: v > b, ">"),
            ("le", lambda v, b: v <= b, "<="),
            ("lt", lambda v, b: v < b, "<"),
        ):
            if key in meta and not test(value, meta[key]):
                raise ConfigError(f"{name}: must be {word} {meta[key]}, got {value}")


def check_fields(obj: Any) -> None:
    """Check every leaf field of ``obj`` against its type, choices and range (nested configs check
    themselves when built)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            continue
        _check_value(f.name, getattr(obj, f.name), tp, f.metadata)


class Config:
    """Base of every config dataclass: values are checked however they arrive."""

    def __post_init__(self) -> None:
        check_fields(self)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "", source: str | None = None) -> T:
    """Build a (nested) dataclass from a dict, naming any bad option with its dotted name."""

    def fail(message: str) -> FspoError:
        return FspoError(f"{source}: {message}" if source else message)

    if not isinstance(data, dict):
        raise fail(f"{prefix.rstrip('.') or 'config'}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise fail(f"{prefix}{key}: unknown option (known: {', '.join(fields)})")
        tp = hints[key]
        try:
            if dataclasses.is_dataclass(tp):
                kwargs[key] = from_dict(tp, value or {}, f"{prefix}{key}.", source)
            else:
                kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
        except ConfigError as exc:
            raise fail(str(exc)) from None
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise fail(f"{prefix}{exc}") from None


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


PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED = ("examples", "configs")  # folders that ship inside the package


def shipped_path(path: str | Path) -> Path:
    """``path`` as given if it exists; else, for ``examples/...`` and ``configs/...``, the copy that
    ships with fspo, so the defaults and the docs' commands work from any directory."""
    p = Path(path)
    if p.exists() or p.is_absolute() or not p.parts or p.parts[0] not in SHIPPED:
        return p
    packaged = PACKAGE_DIR / p
    return packaged if packaged.exists() else p


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = shipped_path(path)
    if not p.is_file():
        raise FspoError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise FspoError(f"{p}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise FspoError(f"{p}: cannot read config: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise FspoError(f"{p}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults <- YAML file <- overrides (dotted keys)."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(cls, data, source=str(path) if path and not overrides else None)


def iter_leaves(cls: type, prefix: str = ""):
    """Yield ``(dotted_name, field, type)`` for every leaf option of a nested dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from iter_leaves(tp, name + ".")
        else:
            yield name, f, tp


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, aliases: dict[str, str] | None = None) -> None:
    """``--config FILE.yaml``, one ``--section.field`` flag per leaf option (plus short aliases,
    all unset by default so YAML values survive), and trailing ``section.field=value`` overrides.

    A boolean flag alone means true (``--lora``); ``--lora false`` turns it off. An alias whose
    target starts with ``!`` is a flag that sets that boolean to false (``{"quiet": "!progress"}``).
    List and map options may be repeated (``--method-model a=x --method-model b=y``)."""
    aliases = aliases or {}
    reverse: dict[str, list[str]] = {}
    for alias, target in aliases.items():
        reverse.setdefault(target, []).append(alias)
    parser.add_argument("--config", default=None, metavar="FILE.yaml", help="options from a YAML file")
    groups: dict[str, argparse._ArgumentGroup] = {}

    def group_of(name: str) -> argparse._ArgumentGroup:
        section = name.split(".")[0] if "." in name else "run"
        return groups.setdefault(section, parser.add_argument_group(f"{section} options"))

    def kebab(flag: str) -> list[str]:
        return [f"--{flag}"] + ([f"--{flag.replace('_', '-')}"] if "_" in flag else [])

    for name, f, tp in iter_leaves(cls):
        flags = kebab(name)
        for alias in reverse.get(name, []):
            flags = kebab(alias) + flags
        leaf = _leaf_type(tp)
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "")
        if choices and leaf is not bool:
            help_text += f" {{{', '.join(map(str, choices))}}}"
        if f.metadata.get("required"):
            help_text += " (required)"
        elif "(default:" not in help_text:  # a help text may say its default in words ("default: lr")
            help_text += f" (default: {_default_text(f)})"
        help_text = help_text.replace("%", "%%")
        extra: dict[str, Any] = {"metavar": _type_name(tp).upper().replace(" ", "_")}
        if leaf is bool:
            extra = {"nargs": "?", "const": "true", "metavar": "BOOL"}
        elif typing.get_origin(leaf) in (list, dict):
            extra["action"] = "append"
        group_of(name).add_argument(*flags, dest=f"cfg:{name}", default=None, help=help_text, **extra)
        for alias in reverse.get(f"!{name}", []):
            group_of(name).add_argument(
                *kebab(alias), dest=f"cfg:{name}", action="store_const", const="false", help=f"same as --{name} false"
            )
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="dotted overrides")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out = {
        k[4:]: ",".join(v) if isinstance(v, list) else v
        for k, v in vars(args).items()
        if k.startswith("cfg:") and v is not None
    }
    for item in getattr(args, "overrides", None) or []:
        if "=" not in item:
            raise FspoError(f"override {show(item)}: expected section.field=value")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The config a subcommand runs with: defaults <- ``--config`` YAML <- flags and overrides.
    A bad value given as a flag is named as the flag (``--port: must be <= 65535``)."""
    overrides = overrides_from_args(args)
    try:
        return load_config(cls, getattr(args, "config", None), overrides)
    except FspoError as exc:
        message = str(exc)
        flags = {k for k in vars(args) if k.startswith("cfg:") and getattr(args, k) is not None}
        for key in sorted(overrides, key=len, reverse=True):
            if message.startswith(f"{key}:") and f"cfg:{key}" in flags:
                raise FspoError(f"--{message}") from None
        raise
