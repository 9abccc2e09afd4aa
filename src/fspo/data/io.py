"""Read and write the canonical files; JSONL, JSON, Parquet and Hugging Face ``datasets`` folders.

Writes are atomic (temp file + ``os.replace``) so a killed job never leaves half a file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fspo.data.schema import PreferenceRecord, UserProfile, parse_preference, parse_user
from fspo.errors import DataError, FspoError

Row = tuple[int | None, Any]  # (1-based line or row number, decoded object)


def iter_rows(path: str | Path) -> Iterator[Row]:
    """Yield ``(line_number, object)`` for each row of a JSONL/JSON/Parquet file or HF dataset folder.

    Undecodable JSON lines are yielded as :class:`DataError` objects so that validation can
    report every problem in one pass instead of stopping at the first.
    """
    path = Path(path)
    if not path.exists():
        raise FspoError(f"{path}: no such file or directory")
    if path.is_dir():
        yield from _iter_hf_dir(path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(str(path), exc.lineno, "<json>", exc.msg) from None
        if not isinstance(data, list):
            raise DataError(str(path), 1, "<json>", "expected a JSON array of objects")
        yield from enumerate(data, start=1)
    else:
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield i, DataError(str(path), i, "<json>", f"invalid JSON: {exc.msg} (column {exc.colno})")


def _iter_hf_dir(path: Path) -> Iterator[Row]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise FspoError(f"{path}: reading a datasets folder needs the 'datasets' package") from exc
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise FspoError(f"{path}: not a Hugging Face datasets folder ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        n = 0
        for split_name, part in ds.items():
            for row in part:
                n += 1
                row = dict(row)
                row.setdefault("split", "test" if split_name == "test" else split_name)
                yield n, row
    else:
        yield from enumerate(ds, start=1)


def _parse_all(path: str | Path, parse) -> tuple[list, list[DataError]]:
    records, problems = [], []
    for line, obj in iter_rows(path):
        if isinstance(obj, DataError):
            problems.append(obj)
            continue
        try:
            records.append(parse(obj, str(path), line))
        except DataError as exc:
            problems.append(exc)
    return records, problems


def read_preferences(path: str | Path) -> list[PreferenceRecord]:
    """Read every preference in ``path``; raise the first :class:`DataError` (use ``validate`` for all)."""
    records, problems = _parse_all(path, parse_preference)
    if problems:
        raise problems[0]
    if not records:
        raise DataError(str(path), None, "<file>", "contains no preferences")
    return records


def read_users(path: str | Path) -> list[UserProfile]:
    users, problems = _parse_all(path, parse_user)
    if problems:
        raise problems[0]
    _check_unique_users(users, str(path), problems)
    if problems:
        raise problems[0]
    return users


def _check_unique_users(users: list[UserProfile], path: str, problems: list[DataError]) -> None:
    seen: set[str] = set()
    for i, user in enumerate(users, start=1):
        if user.user_id in seen:
            problems.append(DataError(path, i, "user_id", f"duplicate user {user.user_id!r}"))
        seen.add(user.user_id)


def looks_like_users_file(path: str | Path) -> bool:
    """A users file has descriptions/attributes and no preference fields."""
    name = Path(path).name
    if "users" in name:
        return True
    for _, obj in iter_rows(path):
        if isinstance(obj, dict):
            return "prompt" not in obj and ("description" in obj or "attributes" in obj)
        return False
    return False


def validate_file(path: str | Path) -> list[DataError]:
    """Every problem in one file (preferences or users, detected from its content)."""
    if looks_like_users_file(path):
        users, problems = _parse_all(path, parse_user)
        _check_unique_users(users, str(path), problems)
        return problems
    records, problems = _parse_all(path, parse_preference)
    if not records and not problems:
        problems.append(DataError(str(path), None, "<file>", "contains no preferences"))
    return problems


@contextmanager
def _atomic_file(path: str | Path) -> Iterator[TextIO]:
    """Open a temp file next to ``path``; on success fsync and rename it over ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Atomically write rows (dataclasses with ``to_dict`` or dicts) as JSONL; return the row count."""
    n = 0
    with _atomic_file(path) as fh:
        for row in rows:
            obj = row.to_dict() if hasattr(row, "to_dict") else row
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_text_atomic(path: str | Path, text: str) -> None:
    with _atomic_file(path) as fh:
        fh.write(text)


def atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` and rename the result to ``final`` (replacing an old one), so a folder
    with the final name is always whole, even after a kill -9."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; a model folder should be readable like any other
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass
class PreferenceData:
    """A dataset: preferences plus (optionally) the users behind them."""

    prefs: list[PreferenceRecord]
    users: dict[str, UserProfile] = field(default_factory=dict)
    source: str = ""

    def split(self, name: str) -> list[PreferenceRecord]:
        return [r for r in self.prefs if r.split == name]

    def user_split(self, user_id: str) -> str | None:
        user = self.users.get(user_id)
        return user.split if user else None


def load_data(path: str | Path, users_path: str | Path | None = None) -> PreferenceData:
    """Load ``prefs.jsonl`` (or any accepted format) and its ``users.jsonl``.

    ``path`` may be a folder holding ``prefs.jsonl`` (+ ``users.jsonl``), or a preferences file;
    a ``users.jsonl`` next to the file is picked up automatically.
    """
    path = Path(path)
    if path.is_dir() and (path / "prefs.jsonl").exists():
        prefs_path = path / "prefs.jsonl"
        users_path = users_path or (path / "users.jsonl" if (path / "users.jsonl").exists() else None)
    else:
        prefs_path = path
        sibling = path.parent / "users.jsonl"
        if users_path is None and not path.is_dir() and sibling.exists() and sibling != path:
            users_path = sibling
    prefs = read_preferences(prefs_path)
    users: dict[str, UserProfile] = {}
    if users_path is not None:
        users = {u.user_id: u for u in read_users(users_path)}
        for i, rec in enumerate(prefs, start=1):
            if rec.user_id not in users:
                raise DataError(str(prefs_path), i, "user_id", f"user {rec.user_id!r} is not in {users_path}")
            user_split = users[rec.user_id].split
            if user_split == "test" and rec.split == "train":
                raise DataError(
                    str(prefs_path),
                    i,
                    "split",
                    f"user {rec.user_id!r} is held out (test) in {users_path} but this row is train",
                )
    return PreferenceData(prefs, users, str(prefs_path))


def export_trl(records: Iterable[PreferenceRecord], path: str | Path) -> int:
    """Write TRL's ``prompt/chosen/rejected`` rows (plus ``user_id``) for training elsewhere."""
    rows = ({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "user_id": r.user_id} for r in records)
    return write_jsonl(path, rows)
