"""SQLite shared by the API and the study app: WAL mode, one connection per thread.

WAL lets readers proceed while one writer commits; per-thread connections avoid sharing a
connection across the server's worker threads; ``BEGIN IMMEDIATE`` takes the write lock up front
so read-then-write transactions cannot deadlock, and ``busy_timeout`` makes writers queue
instead of failing under load.

A commit is in the WAL file before the call returns, so a kill -9 of the process loses no
committed (acknowledged) row; ``synchronous=NORMAL`` means a power loss may lose the last commits.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from fspo.errors import FspoError


def hash_secret(secret: str) -> str:
    """What is stored for an API key or invite token: its SHA-256, never the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Database:
    """A SQLite file opened lazily per thread with the schema applied once."""

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            file = Path(self.path)
            if file.is_dir():
                raise FspoError(f"{file}: is a folder, not a SQLite database file")
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FspoError(f"{file}: cannot create its folder: {exc.strerror or exc}") from None
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        try:
            self.connect().executescript(schema)  # executescript commits on its own
        except sqlite3.Error as exc:
            self.close()
            raise FspoError(f"{self.path}: not a usable SQLite database: {exc}") from None

    def connect(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA foreign_keys=ON")
            self._local.con = con
            with self._guard:
                self._all.append(con)
        return con

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        con = self.connect()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self.connect().execute(sql, args).fetchall()

    def close(self) -> None:
        with self._guard:
            for con in self._all:
                with suppress(sqlite3.Error):
                    con.close()
            self._all.clear()
        self._local = threading.local()
