"""Read and write the canonical files; JSONL, JSON, Parquet and Hugging Face ``datasets`` folders.

Reading never raises anything but :class:`DataError` for a bad input (wrong encoding, broken JSON,
a damaged Parquet file, an unreadable path), so every command prints it as one line. Writes are
atomic (temp file + ``os.replace``) so a killed job never leaves half a file behind, and an output
folder is locked (:func:`lock_output`) so two jobs never interleave their files.
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fspo.config import shipped_path
from fspo.data.schema import (
    PREFERENCE_KEYS,
    SPLIT_ALIASES,
    SPLITS,
    LongInteger,
    PreferenceRecord,
    UserProfile,
    parse_preference,
    parse_user,
)
from fspo.errors import DataError, FspoError

Row = tuple[int | None, Any]  # (1-based line or row number, decoded object)
LOCK_NAME = ".fspo.lock"
_FOREIGN_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


# ---------------------------------------------------------------------------------------- reading


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON keeps the last of two equal keys; a row saying two things is refused instead."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _parse_int(digits: str) -> int | LongInteger:
    return int(digits) if len(digits) <= 4000 else LongInteger(digits)  # Python refuses over 4300 digits


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_int=_parse_int)


def loads(text: str) -> Any:
    """``json.loads`` for user data: duplicate keys raise ``ValueError``; huge integers become
    :class:`LongInteger` (refused later, naming their field)."""
    return _DECODER.decode(text)


def _json_problem(path: str, line: int | None, text: str) -> Any:
    """The decoded value of ``text``, or the :class:`DataError` that says why there is none."""
    try:
        return loads(text)
    except _DuplicateKey as exc:
        return DataError(path, line, exc.key, "duplicate key in one object")
    except json.JSONDecodeError as exc:  # a whole .json file (line None) takes the decoder's line
        return DataError(path, line or exc.lineno, "<json>", f"invalid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return DataError(path, line, "<json>", "invalid JSON: nested too deeply")


def _stat(path: Path) -> os.stat_result | None:
    """``path``'s status, None if it does not exist; other errors (permissions) become a DataError."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise DataError(str(path), None, "<file>", f"cannot read: {exc.strerror or exc}") from None


def _exists(path: Path) -> bool:
    return _stat(path) is not None


def _is_dir(path: Path) -> bool:
    st = _stat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _read_head(path: Path, fh: IO[bytes]) -> bytes:
    """Check the first bytes: UTF-16/32 and binary files are refused, a UTF-8 BOM is skipped."""
    head = fh.read(4096)
    for bom, name in _FOREIGN_BOMS:
        if head.startswith(bom):
            raise DataError(str(path), 1, "<encoding>", f"the file is {name}; fspo reads UTF-8 (save it as UTF-8)")
    if b"\x00" in head:
        raise DataError(str(path), 1, "<encoding>", "contains NUL bytes (UTF-16 without a BOM, or not text?)")
    return head[len(codecs.BOM_UTF8) :] if head.startswith(codecs.BOM_UTF8) else head


def _decode(path: Path, line: int, raw: bytes) -> str | DataError:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line += raw.count(b"\n", 0, exc.start)
        column = exc.start - line_start + 1
        return DataError(str(path), line, "<encoding>", f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {column}")


def _iter_text(path: Path) -> Iterator[Row]:
    """JSONL (or a ``.json`` array); a bad line is yielded as a DataError so validation sees them all."""
    try:
        with path.open("rb") as fh:
            head = _read_head(path, fh)
            if path.suffix == ".json" and not head.lstrip().startswith(b"{"):  # a JSON array; "{": JSON lines
                yield from _json_array(path, head + fh.read())
                return
            for i, raw in enumerate(_lines(head, fh), start=1):
                if not raw.strip():
                    continue
                text = _decode(path, i, raw)
                yield i, (text if isinstance(text, DataError) else _json_problem(str(path), i, text))
    except OSError as exc:
        raise DataError(str(path), None, "<file>", f"cannot read: {exc.strerror or exc}") from None


def _lines(head: bytes, fh: IO[bytes]) -> Iterator[bytes]:
    """The lines of a file whose first bytes were already read into ``head``."""
    *first, rest = head.split(b"\n")
    yield from (line + b"\n" for line in first)
    for line in fh:
        if rest:
            line, rest = rest + line, b""
        yield line
    if rest:
        yield rest


def _json_array(path: Path, raw: bytes) -> Iterator[Row]:
    text = _decode(path, 1, raw)
    if isinstance(text, DataError):
        raise text
    data = _json_problem(str(path), None, text)
    if isinstance(data, DataError):
        raise data
    if not isinstance(data, list):
        raise DataError(str(path), 1, "<json>", "expected a JSON array of objects (or one object per line)")
    yield from enumerate(data, start=1)


def _iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(str(path), None, "<parquet>", f"not a readable Parquet file: {reason[:200]}") from None
    yield from enumerate(rows, start=1)


def _parquet_shards(path: Path) -> list[Path]:
    """The Parquet shards of a Hub-style dataset folder (``*.parquet`` or ``data/*.parquet``),
    when it is not a ``save_to_disk`` folder."""
    if any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
        return []
    return sorted(path.glob("*.parquet")) or sorted(path.glob("data/*.parquet"))


def _iter_shards(shards: list[Path]) -> Iterator[Row]:
    """Rows of every shard in order, numbered across shards; ``train-00000-of-00002.parquet``
    gives its rows the split ``train`` unless they carry their own (split names as rows spell
    them: :data:`fspo.data.schema.SPLITS` and their aliases)."""
    n = 0
    for shard in shards:
        name = shard.name.split("-")[0].split(".")[0]
        split = name if name in SPLITS or name in SPLIT_ALIASES else None
        for _, row in _iter_parquet(shard):
            n += 1
            if split is not None and isinstance(row, dict):
                row.setdefault("split", split)
            yield n, row


def _iter_csv(path: Path) -> Iterator[Row]:
    """CSV with a header row (``user_id,prompt,chosen,rejected[,split]``); row n is file line n + 1."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(str(path), None, "<csv>", f"not a readable UTF-8 CSV file: {str(exc)[:200]}") from None
    for n, row in enumerate(rows, start=2):
        if None in row:
            yield n, DataError(str(path), n, "<csv>", "more cells than header columns")
            continue
        yield n, {k: v for k, v in row.items() if v not in ("", None)}


def _iter_hf_dir(path: Path) -> Iterator[Row]:
    try:
        os.listdir(path)
    except OSError as exc:
        raise DataError(str(path), None, "<file>", f"cannot read: {exc.strerror or exc}") from None
    shards = _parquet_shards(path)
    if shards:
        yield from _iter_shards(shards)
        return
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise FspoError(f"{path}: reading a datasets folder needs the 'datasets' package") from exc
    try:
        ds = datasets.load_from_disk(str(path))
        parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
        rows = [(name, dict(row)) for name, part in parts for row in part]
    except Exception as exc:  # noqa: BLE001 - a damaged folder raises anything; none of it is a bug of ours
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(str(path), None, "<folder>", f"not a Hugging Face datasets folder: {reason[:200]}") from None
    for n, (split_name, row) in enumerate(rows, start=1):
        if split_name is not None:
            row.setdefault("split", split_name)
        yield n, row


def iter_rows(path: str | Path) -> Iterator[Row]:
    """Yield ``(line_number, object)`` for each row of a JSONL/JSON/Parquet file or HF dataset folder.

    Undecodable lines are yielded as :class:`DataError` objects so that validation can report
    every problem in one pass; a problem with the whole file raises :class:`DataError`.
    """
    path = Path(path)
    st = _stat(path)
    if st is None:
        raise DataError(str(path), None, "<file>", "no such file or directory")
    if stat.S_ISDIR(st.st_mode):
        yield from _iter_hf_dir(path)
    elif not stat.S_ISREG(st.st_mode):
        raise DataError(str(path), None, "<file>", "not a regular file")
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path)
    elif path.suffix == ".csv":
        yield from _iter_csv(path)
    else:
        yield from _iter_text(path)


def _parse_all(path: str | Path, parse: Callable[[Any, str, int | None], Any]) -> tuple[list[Row], list[DataError]]:
    """``(line, record)`` for every good row and every problem; a whole-file problem is one problem."""
    records: list[Row] = []
    problems: list[DataError] = []
    try:
        for line, obj in iter_rows(path):
            if isinstance(obj, DataError):
                problems.append(obj)
                continue
            try:
                records.append((line, parse(obj, str(path), line)))
            except DataError as exc:
                problems.append(exc)
    except DataError as exc:
        problems.append(exc)
    return records, problems


def _preferences(path: str | Path) -> list[Row]:
    records, problems = _parse_all(path, parse_preference)
    if problems:
        raise problems[0]
    if not records:
        raise DataError(str(path), None, "<file>", "contains no preferences")
    return records


def read_preferences(path: str | Path) -> list[PreferenceRecord]:
    """Read every preference in ``path``; raise the first :class:`DataError` (use ``validate`` for all)."""
    return [rec for _, rec in _preferences(path)]


def _users(path: str | Path) -> tuple[list[Row], list[DataError]]:
    users, problems = _parse_all(path, parse_user)
    seen: set[str] = set()
    for line, user in users:
        if user.user_id in seen:
            problems.append(DataError(str(path), line, "user_id", f"duplicate user {user.user_id!r}"))
        seen.add(user.user_id)
    return users, problems


def read_users(path: str | Path) -> list[UserProfile]:
    """Read every user in ``path``; raise the first :class:`DataError` (duplicate ids included)."""
    users, problems = _users(path)
    if problems:
        raise problems[0]
    return [user for _, user in users]


def looks_like_users_file(path: str | Path) -> bool:
    """A users file is named ``users.jsonl`` (``.json``, ``.parquet``), or, under any other name
    but ``prefs.*``, its first 100 rows have no preference field and some have a description or
    attributes. Never decided by a substring of the name: ``my_users_prefs.jsonl`` is preferences.
    """
    p = Path(path)
    if p.suffix in DATA_SUFFIXES and p.stem in ("users", "prefs"):
        return p.stem == "users"
    try:
        rows = [obj for _, obj in itertools.islice(iter_rows(p), 100) if isinstance(obj, dict)]
    except DataError:
        return False
    return not any(PREFERENCE_KEYS & obj.keys() for obj in rows) and any(
        "description" in obj or "attributes" in obj for obj in rows
    )


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def users_file_for(path: str | Path) -> Path | None:
    """The ``users.*`` file that :func:`load_data` pairs with ``path`` (a folder or a prefs file)."""
    path = Path(path)
    folder = path if _is_dir(path) else path.parent
    for suffix in DATA_SUFFIXES:
        users = folder / f"users{suffix}"
        if users != path and _exists(users):
            return users
    return None


def prefs_file_for(path: str | Path) -> Path:
    """``path/prefs.jsonl`` (or ``.json``, ``.parquet``, ``.csv``) for a folder holding one, else
    ``path`` itself (a file, a datasets folder, or a folder of Parquet shards)."""
    path = Path(path)
    if _is_dir(path):
        for suffix in DATA_SUFFIXES:
            if _exists(path / f"prefs{suffix}"):
                return path / f"prefs{suffix}"
    return path


def check_against_users(
    prefs: list[Row], users: dict[str, UserProfile], prefs_path: str | Path, users_path: str | Path
) -> list[DataError]:
    """What training refuses when prefs and users disagree: a user missing from the users file, and a
    held-out (``split: test``) user's row marked ``train``, which would leak the user into training."""
    problems = []
    for line, rec in prefs:
        user = users.get(rec.user_id)
        if user is None:
            problems.append(DataError(str(prefs_path), line, "user_id", f"user {rec.user_id!r} is not in {users_path}"))
        elif user.split == "test" and rec.split == "train":
            problems.append(
                DataError(
                    str(prefs_path),
                    line,
                    "split",
                    f"user {rec.user_id!r} is held out (test) in {users_path} but this row is train",
                )
            )
    return problems


def validate_file(path: str | Path, users_path: str | Path | None = None) -> list[DataError]:
    """Every problem in one file (preferences or users, see :func:`looks_like_users_file`).

    A preferences file is also checked against ``users_path`` (when that file is itself valid),
    exactly as :func:`load_data` checks it before training.
    """
    if looks_like_users_file(path):
        return _users(path)[1]
    records, problems = _parse_all(path, parse_preference)
    if not records and not problems:
        problems.append(DataError(str(path), None, "<file>", "contains no preferences"))
    if users_path is not None and records:
        users, user_problems = _users(users_path)
        if not user_problems:
            problems += check_against_users(records, {u.user_id: u for _, u in users}, path, users_path)
    return sorted(problems, key=lambda p: p.line or 0)


# ---------------------------------------------------------------------------------------- writing


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def open_atomic(path: str | Path, binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on success fsync and rename it over ``path``, else delete it.

    The file gets the mode a plain ``open`` would give (0666 minus the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
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
    with open_atomic(path) as fh:
        for row in rows:
            obj = row.to_dict() if hasattr(row, "to_dict") else row
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_text_atomic(path: str | Path, text: str) -> None:
    with open_atomic(path) as fh:
        fh.write(text)


def atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` and rename the result to ``final`` (replacing an old one), so a folder
    with the final name is always whole, even after a kill -9."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; a model folder is readable like any other
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def check_output_folder(folder: str | Path) -> None:
    """Refuse, before any expensive work, an output folder that is a file or cannot be written
    (the same messages :func:`lock_output` gives later)."""
    folder = Path(folder)
    if _exists(folder) and not _is_dir(folder):
        raise FspoError(f"{folder}: exists and is not a folder")
    existing = next((p for p in (folder, *folder.absolute().parents) if _exists(p)), None)
    if existing is not None and not _is_dir(existing):
        raise FspoError(f"{folder}: cannot create the output folder: {existing} is not a folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        action = "cannot write here" if existing == folder else "cannot create the output folder"
        raise FspoError(f"{folder}: {action}: Permission denied")


@contextmanager
def lock_output(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder (created if needed) while writing into it.

    A second writer (another process, or another open in this one: ``flock`` locks belong to the
    open file) fails at once with a one-line :class:`FspoError` instead of interleaving files.
    The lock is ``FOLDER/.fspo.lock``, released by the kernel when its holder exits, even by
    kill -9; the file itself stays. A folder this call created is removed again if the body
    fails before writing anything into it. Used by ``fspo synth``; meant for train and eval too.
    """
    folder = Path(folder)
    created = not _exists(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FspoError(f"{folder}: exists and is not a folder") from None
    except OSError as exc:
        raise FspoError(f"{folder}: cannot create the output folder: {exc.strerror or exc}") from None
    fd = _acquire(folder)
    try:
        yield folder
    except BaseException:
        if created:
            _remove_if_only_lock(folder)
        raise
    finally:
        os.close(fd)


@contextmanager
def lock_file(path: str | Path) -> Iterator[Path]:
    """Hold the one-writer lock of a single file (a study's database) while serving it: a second
    server on the same file fails at once. The lock is ``.NAME.lock`` next to the file."""
    path = Path(path)
    fd = _acquire(path.parent, f".{path.name}.lock", str(path))
    try:
        yield path
    finally:
        os.close(fd)


def _acquire(folder: Path, lock_name: str = LOCK_NAME, label: str | None = None, tries: int = 5) -> int:
    """Open and lock ``folder/lock_name``; write our pid into it for the next one's message."""
    import fcntl

    lock = folder / lock_name
    label = label or str(folder)
    for _ in range(tries):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise FspoError(f"{label}: cannot write here: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FspoError(f"{label}: another fspo process is writing here (pid {holder})") from None
        try:  # a failed first run may have removed the file we opened: then lock the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
    raise FspoError(f"{label}: could not take the lock (it keeps being removed)")


def _remove_if_only_lock(folder: Path) -> None:
    """Undo creating ``folder`` when nothing but the lock file was written into it."""
    try:
        if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            (folder / LOCK_NAME).unlink()
            folder.rmdir()
    except OSError:
        pass  # someone else is using it now; leave it


# ---------------------------------------------------------------------------------------- datasets


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


HUB_PREFIX = "hf://"


def load_hub(spec: str) -> PreferenceData:
    """``hf://owner/name`` through ``datasets.load_dataset`` where a hub is reachable (every split;
    the split name becomes the rows' ``split``). Offline it is a one-line error, never a hang:
    set ``HF_HUB_OFFLINE=1`` on machines without network."""
    name = spec[len(HUB_PREFIX) :].strip("/")
    try:
        import datasets

        ds = datasets.load_dataset(name)
        parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
        rows = [(split, dict(row)) for split, part in parts for row in part]
    except Exception as exc:  # noqa: BLE001 - network, auth and format failures all end here
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FspoError(
            f"{spec}: cannot load from the Hugging Face Hub ({reason}); on a machine without network, "
            "download the dataset elsewhere and pass its folder"
        ) from None
    records = []
    for n, (split, row) in enumerate(rows, start=1):
        if split is not None:
            row.setdefault("split", split)  # parse_preference reads the aliases (eval, valid, ...)
        records.append(parse_preference(row, spec, n))
    if not records:
        raise DataError(spec, None, "<dataset>", "contains no preferences")
    return PreferenceData(records, {}, spec)


def load_data(path: str | Path, users_path: str | Path | None = None) -> PreferenceData:
    """Load ``prefs.jsonl`` (or any accepted format) and its ``users.jsonl``; raise the first
    :class:`DataError` (``fspo validate`` lists them all, with the same rules).

    ``path`` may be a folder holding ``prefs.jsonl`` (+ ``users.jsonl``), or a preferences file;
    a ``users.jsonl`` next to the file is picked up automatically.
    """
    if str(path).startswith(HUB_PREFIX):
        return load_hub(str(path))
    path = shipped_path(path)  # examples/reviews works from any directory
    prefs_path = prefs_file_for(path)
    users_path = users_path if users_path is not None else users_file_for(path)
    prefs = _preferences(prefs_path)
    users: dict[str, UserProfile] = {}
    if users_path is not None:
        users = {u.user_id: u for u in read_users(users_path)}
        problems = check_against_users(prefs, users, prefs_path, users_path)
        if problems:
            raise problems[0]
    return PreferenceData([rec for _, rec in prefs], users, str(prefs_path))


def export_trl(records: Iterable[PreferenceRecord], path: str | Path) -> int:
    """Write TRL's ``prompt/chosen/rejected`` rows (plus ``user_id``) for training elsewhere."""
    rows = ({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "user_id": r.user_id} for r in records)
    return write_jsonl(path, rows)
