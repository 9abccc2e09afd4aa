"""Persistent per-user preference pairs and per-user API keys for ``fspo serve``.

Keys are stored only as SHA-256 hashes. Every read and write takes the user id as a bound
parameter, so a route for one user cannot touch another user's rows. The per-user cap is checked
inside the write transaction that inserts, so parallel posts cannot overshoot it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fspo.data.schema import PreferenceRecord
from fspo.serve.db import Database, hash_secret

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
  user_id TEXT PRIMARY KEY,
  key_hash TEXT,
  created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS preferences (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
  prompt TEXT NOT NULL,
  chosen TEXT NOT NULL,
  rejected TEXT NOT NULL,
  created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS preferences_user ON preferences(user_id, id);
"""


@dataclass(frozen=True)
class StoredPreference:
    id: int
    user_id: str
    prompt: str
    chosen: str
    rejected: str
    created_at: float

    def record(self) -> PreferenceRecord:
        return PreferenceRecord(self.user_id, self.prompt, self.chosen, self.rejected, meta={"id": self.id})


class TooManyPreferences(Exception):
    """Adding the pairs would take the user over the cap; ``have`` is how many they store now."""

    def __init__(self, have: int) -> None:
        super().__init__(have)
        self.have = have


class UserStore:
    """Users, their key hashes and their preference pairs, in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.db = Database(path, SCHEMA)

    def exists(self, user_id: str) -> bool:
        return bool(self.db.query("SELECT 1 FROM users WHERE user_id = ?", (user_id,)))

    def issue_key(self, user_id: str) -> str:
        """Create the user if needed and (re)issue their key; the old key stops working."""
        key = "fspo-u-" + secrets.token_urlsafe(24)
        with self.db.write() as con:
            con.execute(
                "INSERT INTO users(user_id, key_hash, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET key_hash = excluded.key_hash",
                (user_id, hash_secret(key), time.time()),
            )
        return key

    def user_for_key(self, key: str) -> str | None:
        rows = self.db.query("SELECT user_id FROM users WHERE key_hash = ?", (hash_secret(key),))
        return rows[0]["user_id"] if rows else None

    def add(self, user_id: str, pairs: list[tuple[str, str, str]], cap: int | None = None) -> tuple[list[int], int]:
        """Insert the pairs; return their ids and the user's new total. Over ``cap``: nothing is added."""
        now = time.time()
        ids = []
        with self.db.write() as con:  # BEGIN IMMEDIATE: no other writer between the count and the inserts
            have = con.execute("SELECT COUNT(*) FROM preferences WHERE user_id = ?", (user_id,)).fetchone()[0]
            if cap is not None and have + len(pairs) > cap:
                raise TooManyPreferences(have)
            con.execute("INSERT OR IGNORE INTO users(user_id, created_at) VALUES (?, ?)", (user_id, now))
            for prompt, chosen, rejected in pairs:
                cur = con.execute(
                    "INSERT INTO preferences(user_id, prompt, chosen, rejected, created_at) VALUES (?, ?, ?, ?, ?)",
                    (user_id, prompt, chosen, rejected, now),
                )
                ids.append(int(cur.lastrowid))
        return ids, have + len(ids)

    def list(self, user_id: str) -> list[StoredPreference]:
        rows = self.db.query(
            "SELECT id, user_id, prompt, chosen, rejected, created_at FROM preferences WHERE user_id = ? ORDER BY id",
            (user_id,),
        )
        return [StoredPreference(**dict(r)) for r in rows]

    def delete(self, user_id: str, pref_id: int) -> bool:
        with self.db.write() as con:
            cur = con.execute("DELETE FROM preferences WHERE user_id = ? AND id = ?", (user_id, pref_id))
        return cur.rowcount > 0

    def clear(self, user_id: str) -> int:
        with self.db.write() as con:
            cur = con.execute("DELETE FROM preferences WHERE user_id = ?", (user_id,))
        return cur.rowcount

    def delete_user(self, user_id: str) -> bool:
        with self.db.write() as con:
            con.execute("DELETE FROM preferences WHERE user_id = ?", (user_id,))
            cur = con.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
        return cur.rowcount > 0
