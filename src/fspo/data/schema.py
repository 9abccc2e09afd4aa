"""The canonical records: one labeled preference of one user, and one user.

Every stage reads and writes these (``prefs.jsonl`` and ``users.jsonl``, DESIGN.md section 3).
Parsing is strict and names the file, line and field of every problem, because silently
dropping or mis-orienting a preference corrupts a user's few-shot context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fspo.errors import DataError

SPLITS = ("train", "test", "validation")


@dataclass(frozen=True)
class PreferenceRecord:
    """One labeled preference: for ``prompt``, user ``user_id`` prefers ``chosen`` over ``rejected``."""

    user_id: str
    prompt: str
    chosen: str
    rejected: str
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UserProfile:
    """A (synthetic or real) user: a free-text description and the hidden attributes behind it."""

    user_id: str
    description: str = ""
    attributes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    split: str = "train"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(obj: dict, key: str, path: str, line: int | None, *, allow_empty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        raise DataError(path, line, key, "missing required field")
    value = obj[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "user_id":
        value = str(value)
    if not isinstance(value, str):
        raise DataError(path, line, key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(path, line, key, "is empty")
    return value


def _split(obj: dict, path: str, line: int | None) -> str:
    split = obj.get("split", "train")
    if split is None:
        split = "train"
    if split not in SPLITS:
        raise DataError(path, line, "split", f"must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _pairwise_label(obj: dict, path: str, line: int | None) -> bool:
    """True when ``response_a`` (or ``response_x``) is the preferred one."""
    label = obj.get("label")
    if label in (0, "0", "a", "A", "response_a", "x"):
        return True
    if label in (1, "1", "b", "B", "response_b", "y"):
        return False
    raise DataError(path, line, "label", f"must be 0/'a' (first response preferred) or 1/'b', got {label!r}")


def _orient(obj: dict, path: str, line: int | None) -> dict:
    """Convert the accepted row shapes to canonical ``prompt/chosen/rejected/user_id`` fields.

    Accepted: canonical rows; pairwise rows ``response_a/response_b/label``; the FSPO reference
    datasets' rows (``response_x/response_y/label/scorer_level`` and ``x/yw/yl/level``).
    """
    if "chosen" in obj or "rejected" in obj:
        return obj
    out = dict(obj)
    for first, second in (("response_a", "response_b"), ("response_x", "response_y")):
        if first in obj or second in obj:
            a = _text(obj, first, path, line)
            b = _text(obj, second, path, line)
            a_wins = _pairwise_label(obj, path, line)
            out["chosen"], out["rejected"] = (a, b) if a_wins else (b, a)
            break
    else:
        if "yw" in obj or "yl" in obj:
            out["chosen"] = _text(obj, "yw", path, line)
            out["rejected"] = _text(obj, "yl", path, line)
            out.setdefault("prompt", obj.get("x"))
        else:
            raise DataError(path, line, "chosen", "missing required field (or response_a/response_b/label)")
    if "user_id" not in out:
        for alias in ("scorer_level", "level", "user"):
            if alias in obj:
                out["user_id"] = str(obj[alias])
                break
    return out


def parse_preference(obj: Any, path: str = "<memory>", line: int | None = None) -> PreferenceRecord:
    """Parse one row into a :class:`PreferenceRecord`, raising :class:`DataError` on the first problem."""
    if not isinstance(obj, dict):
        raise DataError(path, line, "<row>", f"expected a JSON object, got {type(obj).__name__}")
    obj = _orient(obj, path, line)
    user_id = _text(obj, "user_id", path, line)
    prompt = _text(obj, "prompt", path, line)
    chosen = _text(obj, "chosen", path, line)
    rejected = _text(obj, "rejected", path, line)
    if chosen.strip() == rejected.strip():
        raise DataError(path, line, "rejected", "is identical to chosen; the pair carries no preference")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(path, line, "meta", f"expected an object, got {type(meta).__name__}")
    return PreferenceRecord(user_id, prompt, chosen, rejected, _split(obj, path, line), dict(meta))


def parse_user(obj: Any, path: str = "<memory>", line: int | None = None) -> UserProfile:
    """Parse one ``users.jsonl`` row into a :class:`UserProfile`."""
    if not isinstance(obj, dict):
        raise DataError(path, line, "<row>", f"expected a JSON object, got {type(obj).__name__}")
    user_id = _text(obj, "user_id", path, line)
    description = _text(obj, "description", path, line, allow_empty=True) if "description" in obj else ""
    attributes = obj.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise DataError(path, line, "attributes", f"expected an object, got {type(attributes).__name__}")
    for key, value in attributes.items():
        if not isinstance(value, (str, int, float, bool)):
            raise DataError(path, line, f"attributes.{key}", "expected a string or number")
    attributes = {str(k): str(v) for k, v in attributes.items()}
    return UserProfile(user_id, description, attributes, _split(obj, path, line))
