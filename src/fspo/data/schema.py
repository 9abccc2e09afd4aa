"""The canonical records: one labeled preference of one user, and one user.

Every stage reads and writes these (``prefs.jsonl`` and ``users.jsonl``, docs/data.md).
Parsing is strict and names the file, line and field of every problem, because silently
dropping or mis-orienting a preference corrupts a user's few-shot context. The rules are listed
in docs/data.md ("Validation rules").
"""

from __future__ import annotations

import math
import re
import sys
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from fspo.errors import DataError, show

SPLITS = ("train", "test", "validation")
# Other spellings of a split that datasets on the Hub use, read as fspo's name.
SPLIT_ALIASES = {"eval": "validation", "valid": "validation", "val": "validation", "dev": "validation"}
MAX_NESTING = 32  # levels of objects/arrays in meta and attributes (deeper data breaks JSON writers)
# The fields of any accepted preference row shape; a row with none of them is not a preference.
PREFERENCE_KEYS = frozenset(
    {"prompt", "chosen", "rejected", "response_a", "response_b", "response_x", "response_y", "x", "yw", "yl", "label"}
)
# Not allowed in ids: controls (ANSI escapes, newlines), format characters (zero-width spaces and
# joiners, bidi marks), surrogates, private use, line and paragraph separators.
_BAD_ID_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_BLANK_LETTERS = "\u115f\u1160\u3164\uffa0"  # Hangul fillers: letters that render as nothing
_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_SPACE = re.compile(r"\S")


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


class LongInteger:
    """A JSON integer too long for Python to convert (over 4300 digits): the JSON reader yields this
    instead of failing, so that the field holding it is named in the error."""

    def __init__(self, digits: str) -> None:
        self.digits = len(digits.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer with {self.digits} digits>"


def _kind(value: Any) -> str:
    return repr(value) if isinstance(value, LongInteger) else type(value).__name__


@lru_cache(maxsize=1)
def _invisible() -> re.Pattern[str]:
    """Every format character (category Cf: zero-width space/joiners, BOM, bidi marks, soft hyphen)
    and the blank Hangul fillers; built once, on the first non-ASCII text."""
    points = [c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"]
    points += map(ord, _BLANK_LETTERS)
    ranges = []  # as ranges ("\u200b-\u200f"): a class of single characters is 100x slower to match
    for c in sorted(points):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]")


def _plain(text: str) -> bool:
    """No character but printable ones and ordinary whitespace (checked at C speed, the usual case)."""
    return text.isascii() or text.replace("\n", " ").replace("\t", " ").replace("\r", " ").isprintable()


def _visible(text: str) -> str:
    """``text`` in NFC without invisible characters (fast when there are none, the usual case)."""
    if text.isascii():
        return text
    if not _plain(text):
        text = _invisible().sub("", text)
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def canonical_text(text: str) -> str:
    """What a reader sees: NFC, invisible characters removed, runs of whitespace as one space.

    Two answers with the same canonical text are the same answer (the pair carries no preference).
    """
    return " ".join(_visible(text).split())


def _blank(text: str) -> bool:
    """Nothing but whitespace and invisible characters (usually decided by the first character)."""
    first = _NON_SPACE.search(text)
    if first is None:
        return True
    char = first.group()
    return not char.isascii() and _invisible().match(char) is not None and not canonical_text(text)


def same_answer(a: str, b: str) -> bool:
    """Whether two answers read the same (see :func:`canonical_text`)."""
    return a == b or _visible(a).split() == _visible(b).split()


def _check_unicode(value: str, path: str, line: int | None, key: str) -> None:
    """Refuse lone surrogates (a JSON ``\\ud800`` escape): no UTF-8 file can hold them."""
    if not _plain(value) and _SURROGATE.search(value):
        raise DataError(path, line, key, "contains an unpaired UTF-16 surrogate (invalid Unicode)")


def _text(obj: dict, key: str, path: str, line: int | None, *, allow_empty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        raise DataError(path, line, key, "missing required field")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(path, line, key, f"expected a string, got {_kind(value)}")
    _check_unicode(value, path, line, key)
    if not allow_empty and _blank(value):
        raise DataError(path, line, key, "is empty (or only whitespace and invisible characters)")
    return value


def normalize_id(value: Any, path: str = "<memory>", line: int | None = None, key: str = "user_id") -> str:
    """A user id as fspo stores it: NFC, stripped, visible characters only, not ``.`` or ``..``.

    Integers are accepted and become strings. Normalizing means ids that differ only in Unicode
    composition or surrounding spaces name the same user, as a reader would expect.
    """
    if value is None:
        raise DataError(path, line, key, "missing required field")
    if isinstance(value, LongInteger):
        raise DataError(path, line, key, f"an integer with {value.digits} digits is too long for an id")
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 10**64:
            raise DataError(path, line, key, "integer id has more than 64 digits")
        value = str(value)
    if not isinstance(value, str):
        raise DataError(path, line, key, f"expected a string or integer, got {_kind(value)}")
    _check_unicode(value, path, line, key)
    value = unicodedata.normalize("NFC", value).strip()
    if _blank(value):
        raise DataError(path, line, key, "is empty (or only whitespace and invisible characters)")
    bad = next((ch for ch in value if unicodedata.category(ch) in _BAD_ID_CATEGORIES), None)
    if bad is not None:
        raise DataError(path, line, key, f"contains the control or invisible character {ascii(bad)}")
    if value in (".", ".."):
        raise DataError(path, line, key, f"{value!r} is not a user id (it names a folder)")
    return value


def _json_value(value: Any, path: str, line: int | None, key: str) -> None:
    """Refuse what JSON cannot carry faithfully: NaN/Infinity, non-JSON types, deep nesting."""
    stack = [(value, key, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_NESTING:
            raise DataError(path, line, where, f"nested deeper than {MAX_NESTING} levels")
        if isinstance(item, dict):
            for k in item:
                if not isinstance(k, str):
                    raise DataError(path, line, where, f"key {show(k)} is not a string")
                _check_unicode(k, path, line, where)
            stack += [(v, f"{where}.{k}", depth + 1) for k, v in item.items()]
        elif isinstance(item, list):
            stack += [(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item)]
        elif isinstance(item, float) and not math.isfinite(item):
            raise DataError(path, line, where, f"{item} is not a finite number")
        elif isinstance(item, str):
            _check_unicode(item, path, line, where)
        elif isinstance(item, int) and abs(item) >= 10**64:
            raise DataError(path, line, where, "integer has more than 64 digits")
        elif not (item is None or isinstance(item, (bool, int, float))):
            raise DataError(path, line, where, f"{_kind(item)} is not a JSON value")


def _object(obj: dict, key: str, path: str, line: int | None) -> dict:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(path, line, key, f"expected an object, got {_kind(value)}")
    _json_value(value, path, line, key)
    return dict(value)


def _split(obj: dict, path: str, line: int | None) -> str:
    split = obj.get("split", "train")
    if split is None:
        split = "train"
    if isinstance(split, str):
        split = SPLIT_ALIASES.get(split, split)
    if not isinstance(split, str) or split not in SPLITS:
        raise DataError(path, line, "split", f"must be one of {', '.join(SPLITS)}, got {show(split)}")
    return split


def _pairwise_label(obj: dict, path: str, line: int | None) -> bool:
    """True when ``response_a`` (or ``response_x``) is the preferred one. Booleans and floats are
    refused: ``true`` reads as "a is right", but Python would compare it equal to 1 ("b")."""
    label = obj.get("label")
    if isinstance(label, (int, str)) and not isinstance(label, bool):
        if label in (0, "0", "a", "A", "response_a", "x"):
            return True
        if label in (1, "1", "b", "B", "response_b", "y"):
            return False
    raise DataError(path, line, "label", f"must be 0/'a' (first response preferred) or 1/'b', got {show(label)}")


def _from_messages(obj: dict, field: str, role: str, path: str, line: int | None) -> dict:
    """TRL's conversational rows: ``prompt`` a list of messages (the last ``user`` turn is the
    question), ``chosen``/``rejected`` lists holding the ``assistant`` answer. Other shapes pass."""
    value = obj.get(field)
    if not isinstance(value, list):
        return obj
    turns = [m for m in value if isinstance(m, dict) and m.get("role") == role]
    if not turns or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        raise DataError(path, line, field, f"a list of messages needs at least one {role!r} turn with string content")
    if role == "user" and any(m.get("role") == "assistant" for m in value):
        raise DataError(path, line, field, "multi-turn prompts are not supported: give the question as one user turn")
    return obj | {field: turns[-1]["content"]}


def _orient(obj: dict, path: str, line: int | None) -> dict:
    """Convert the accepted row shapes to canonical ``prompt/chosen/rejected/user_id`` fields.

    Accepted: canonical rows; TRL's conversational rows (lists of messages); pairwise rows
    ``response_a/response_b/label``; the FSPO reference datasets' rows
    (``response_x/response_y/label/scorer_level`` and ``x/yw/yl/level``).
    """
    obj = _from_messages(obj, "prompt", "user", path, line)
    for side in ("chosen", "rejected"):
        obj = _from_messages(obj, side, "assistant", path, line)
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
                out["user_id"] = normalize_id(obj[alias], path, line, alias)
                break
    return out


def parse_preference(obj: Any, path: str = "<memory>", line: int | None = None) -> PreferenceRecord:
    """Parse one row into a :class:`PreferenceRecord`, raising :class:`DataError` on the first problem."""
    if not isinstance(obj, dict):
        raise DataError(path, line, "<row>", f"expected a JSON object, got {_kind(obj)}")
    obj = _orient(obj, path, line)
    user_id = normalize_id(obj.get("user_id"), path, line)
    prompt = _text(obj, "prompt", path, line)
    chosen = _text(obj, "chosen", path, line)
    rejected = _text(obj, "rejected", path, line)
    if same_answer(chosen, rejected):
        raise DataError(path, line, "rejected", "reads the same as chosen; the pair carries no preference")
    meta = _object(obj, "meta", path, line)
    return PreferenceRecord(user_id, prompt, chosen, rejected, _split(obj, path, line), meta)


def parse_user(obj: Any, path: str = "<memory>", line: int | None = None) -> UserProfile:
    """Parse one ``users.jsonl`` row into a :class:`UserProfile`."""
    if not isinstance(obj, dict):
        raise DataError(path, line, "<row>", f"expected a JSON object, got {_kind(obj)}")
    user_id = normalize_id(obj.get("user_id"), path, line)
    description = _text(obj, "description", path, line, allow_empty=True) if obj.get("description") is not None else ""
    attributes = _object(obj, "attributes", path, line)
    for key, value in attributes.items():
        if not isinstance(value, (str, int, float, bool)):
            raise DataError(path, line, f"attributes.{key}", "expected a string or number")
    attributes = {str(k): str(v) for k, v in attributes.items()}
    return UserProfile(user_id, description, attributes, _split(obj, path, line))
