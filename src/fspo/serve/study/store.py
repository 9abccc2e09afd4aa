"""Study storage: participants, their labels and their blind comparisons, in SQLite (WAL).

Each participant's item order and answer sides are drawn at invite time from a seed derived from
the study seed and the participant id, and stored, so what a participant saw is on record and
reproducible. Answers are written with ``... WHERE choice IS NULL``: an answer is stored exactly
once, and a repeated or concurrent post for the same item is a conflict, never an overwrite.
Generated answers are written with ``... WHERE personalized IS NULL`` for the same reason: what a
participant was shown is never replaced (two servers on one file cannot swap it).

A failed generation leaves the participant in ``generating`` with the error noted, to be retried;
``error`` is a status only older versions wrote, and :meth:`StudyStore.requeue_errors` undoes it.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fspo.errors import FspoError
from fspo.serve.db import Database, hash_secret
from fspo.serve.study.config import StudyConfig, config_from_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS participants (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  token_hash TEXT UNIQUE NOT NULL,
  status TEXT NOT NULL DEFAULT 'label',
  error TEXT,
  created_at REAL NOT NULL,
  joined_at REAL,
  labeled_at REAL,
  finished_at REAL
);
CREATE TABLE IF NOT EXISTS labels (
  participant_id INTEGER NOT NULL REFERENCES participants(id),
  position INTEGER NOT NULL,
  item INTEGER NOT NULL,
  question TEXT NOT NULL,
  left_text TEXT NOT NULL,
  right_text TEXT NOT NULL,
  choice TEXT CHECK (choice IN ('left', 'right')),
  answered_at REAL,
  PRIMARY KEY (participant_id, position)
);
CREATE TABLE IF NOT EXISTS comparisons (
  participant_id INTEGER NOT NULL REFERENCES participants(id),
  position INTEGER NOT NULL,
  item INTEGER NOT NULL,
  question TEXT NOT NULL,
  personalized_side TEXT NOT NULL CHECK (personalized_side IN ('left', 'right')),
  personalized TEXT,
  baseline TEXT,
  shots_used INTEGER,
  choice TEXT CHECK (choice IN ('left', 'right', 'tie')),
  winner TEXT CHECK (winner IN ('personalized', 'baseline', 'tie')),
  answered_at REAL,
  PRIMARY KEY (participant_id, position)
);
"""


# Settings that only change how missing answers are generated: they may be fixed (a wrong model
# path, say) as long as no answer was generated with the old ones. Everything else fixes what
# participants are assigned and is never changed.
GENERATION_KEYS = ("model", "baseline_model", "max_new_tokens")


class Conflict(Exception):
    """The item was already answered."""


class NotFound(Exception):
    """No such item for this participant (or not in this phase)."""


@dataclass(frozen=True)
class Participant:
    id: int
    status: str
    error: str | None


class StudyStore:
    """All study data for one study (one config) in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.db = Database(path, SCHEMA)

    # ---- config ----------------------------------------------------------------------------
    def set_config(self, config: StudyConfig) -> list[str]:
        """Store the config on first use. Later, a config may differ from the stored one only in
        :data:`GENERATION_KEYS` and only while nothing was generated (answers would not match);
        returns the keys it changed."""
        with self.db.write() as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta(key, value) VALUES ('config', ?)", (config.to_json(),))
                return []
            old = config_from_json(row["value"])
            if old.digest() == config.digest():
                return []
            new_values, old_values = asdict(config), asdict(old)
            changed = sorted(k for k in new_values if new_values[k] != old_values.get(k))
            fixed = [k for k in changed if k not in GENERATION_KEYS]
            if fixed:
                raise FspoError(
                    f"{self.db.path}: holds a different study config ({', '.join(fixed)} differ); "
                    "use a new --db for a new study"
                )
            generated = self._generated(con, old)
            if generated:
                raise FspoError(
                    f"{self.db.path}: {', '.join(changed)} cannot change: {generated} answers were already "
                    "generated with the stored settings; use a new --db for a new study"
                )
            con.execute("UPDATE meta SET value = ? WHERE key = 'config'", (config.to_json(),))
        return changed

    @staticmethod
    def _generated(con, config: StudyConfig) -> int:
        """How many comparison rows hold an answer that a model wrote (not pre-generated)."""
        rows = con.execute("SELECT item FROM comparisons WHERE personalized IS NOT NULL").fetchall()
        return sum(
            1
            for r in rows
            if config.compare[r["item"]].personalized is None or config.compare[r["item"]].baseline is None
        )

    def config(self) -> StudyConfig:
        rows = self.db.query("SELECT value FROM meta WHERE key = 'config'")
        if not rows:
            raise FspoError(f"{self.db.path}: no study here; create one with 'fspo study init'")
        return config_from_json(rows[0]["value"])

    # ---- participants ------------------------------------------------------------------------
    def invite(self, n: int) -> list[str]:
        """Create ``n`` participants with their item order and sides; return their invite tokens."""
        config = self.config()
        tokens = []
        with self.db.write() as con:
            for _ in range(n):
                token = secrets.token_urlsafe(18)
                cur = con.execute(
                    "INSERT INTO participants(token_hash, created_at) VALUES (?, ?)", (hash_secret(token), time.time())
                )
                self._assign(con, int(cur.lastrowid), config)
                tokens.append(token)
        return tokens

    @staticmethod
    def _assign(con, pid: int, config: StudyConfig) -> None:
        rng = random.Random(f"{config.seed}:{pid}")
        items = rng.sample(range(len(config.label_pairs)), config.labels_per_participant)
        for pos, item in enumerate(items):
            a, b = config.label_pairs[item].answers
            left, right = (a, b) if rng.random() < 0.5 else (b, a)
            con.execute(
                "INSERT INTO labels(participant_id, position, item, question, left_text, right_text) VALUES (?,?,?,?,?,?)",
                (pid, pos, item, config.label_pairs[item].question, left, right),
            )
        order = rng.sample(range(len(config.compare)), len(config.compare))
        for pos, item in enumerate(order):
            side = "left" if rng.random() < 0.5 else "right"
            con.execute(
                "INSERT INTO comparisons(participant_id, position, item, question, personalized_side) VALUES (?,?,?,?,?)",
                (pid, pos, item, config.compare[item].question, side),
            )

    def participant(self, token: str) -> Participant | None:
        rows = self.db.query("SELECT id, status, error FROM participants WHERE token_hash = ?", (hash_secret(token),))
        return Participant(rows[0]["id"], rows[0]["status"], rows[0]["error"]) if rows else None

    def get(self, pid: int) -> Participant:
        r = self.db.query("SELECT id, status, error FROM participants WHERE id = ?", (pid,))[0]
        return Participant(r["id"], r["status"], r["error"])

    def mark_joined(self, pid: int) -> None:
        with self.db.write() as con:
            con.execute("UPDATE participants SET joined_at = ? WHERE id = ? AND joined_at IS NULL", (time.time(), pid))

    def set_status(self, pid: int, status: str, error: str | None = None) -> None:
        col = {"generating": "labeled_at", "done": "finished_at"}.get(status)
        with self.db.write() as con:
            con.execute("UPDATE participants SET status = ?, error = ? WHERE id = ?", (status, error, pid))
            if col:
                con.execute(f"UPDATE participants SET {col} = ? WHERE id = ?", (time.time(), pid))

    def note_failure(self, pid: int, error: str) -> None:
        """Record why generating a participant's answers failed; they stay in ``generating`` for a retry."""
        with self.db.write() as con:
            con.execute("UPDATE participants SET error = ? WHERE id = ? AND status = 'generating'", (error, pid))

    def requeue_errors(self) -> int:
        """Put participants that an older version parked in ``error`` back in line for generation."""
        with self.db.write() as con:
            return con.execute("UPDATE participants SET status = 'generating' WHERE status = 'error'").rowcount

    def participants_in(self, status: str) -> list[int]:
        return [r["id"] for r in self.db.query("SELECT id FROM participants WHERE status = ?", (status,))]

    # ---- labels ------------------------------------------------------------------------------
    def labels(self, pid: int) -> list[dict]:
        rows = self.db.query("SELECT * FROM labels WHERE participant_id = ? ORDER BY position", (pid,))
        return [dict(r) for r in rows]

    def answer_label(self, pid: int, position: int, choice: str) -> bool:
        """Store a label; returns True when it was the participant's last one."""
        with self.db.write() as con:
            cur = con.execute(
                "UPDATE labels SET choice = ?, answered_at = ? WHERE participant_id = ? AND position = ? "
                "AND choice IS NULL",
                (choice, time.time(), pid, position),
            )
            if cur.rowcount == 0:
                exists = con.execute(
                    "SELECT 1 FROM labels WHERE participant_id = ? AND position = ?", (pid, position)
                ).fetchone()
                raise Conflict() if exists else NotFound()
            left = con.execute(
                "SELECT COUNT(*) FROM labels WHERE participant_id = ? AND choice IS NULL", (pid,)
            ).fetchone()[0]
            if left == 0:
                con.execute(
                    "UPDATE participants SET status = 'generating', labeled_at = ? WHERE id = ?", (time.time(), pid)
                )
        return left == 0

    # ---- comparisons -----------------------------------------------------------------------------
    def comparisons(self, pid: int) -> list[dict]:
        rows = self.db.query("SELECT * FROM comparisons WHERE participant_id = ? ORDER BY position", (pid,))
        return [dict(r) for r in rows]

    def set_answers(self, pid: int, position: int, personalized: str, baseline: str, shots_used: int | None) -> None:
        with self.db.write() as con:
            con.execute(
                "UPDATE comparisons SET personalized = ?, baseline = ?, shots_used = ? "
                "WHERE participant_id = ? AND position = ? AND personalized IS NULL",
                (personalized, baseline, shots_used, pid, position),
            )

    def skip_comparison(self, pid: int, position: int) -> None:
        """Drop a comparison no answer can be generated for (never one already shown or answered)."""
        with self.db.write() as con:
            con.execute(
                "DELETE FROM comparisons WHERE participant_id = ? AND position = ? AND personalized IS NULL "
                "AND choice IS NULL",
                (pid, position),
            )

    def answer_comparison(self, pid: int, position: int, choice: str) -> bool:
        """Store a comparison; returns True when it was the participant's last one."""
        with self.db.write() as con:
            row = con.execute(
                "SELECT personalized_side, choice, personalized FROM comparisons WHERE participant_id = ? "
                "AND position = ?",
                (pid, position),
            ).fetchone()
            if row is None or row["personalized"] is None:
                raise NotFound()
            if row["choice"] is not None:
                raise Conflict()
            winner = (
                "tie" if choice == "tie" else ("personalized" if choice == row["personalized_side"] else "baseline")
            )
            con.execute(
                "UPDATE comparisons SET choice = ?, winner = ?, answered_at = ? WHERE participant_id = ? "
                "AND position = ? AND choice IS NULL",
                (choice, winner, time.time(), pid, position),
            )
            left = con.execute(
                "SELECT COUNT(*) FROM comparisons WHERE participant_id = ? AND choice IS NULL", (pid,)
            ).fetchone()[0]
            if left == 0:
                con.execute("UPDATE participants SET status = 'done', finished_at = ? WHERE id = ?", (time.time(), pid))
        return left == 0

    # ---- export ------------------------------------------------------------------------------------
    def comparison_rows(self) -> list[dict]:
        rows = self.db.query(
            "SELECT participant_id, position, item, question, personalized_side, choice, winner, answered_at, "
            "shots_used, personalized, baseline FROM comparisons ORDER BY participant_id, position"
        )
        return [dict(r) for r in rows]

    def label_rows(self) -> list[dict]:
        rows = self.db.query(
            "SELECT participant_id, position, item, question, left_text, right_text, choice, answered_at "
            "FROM labels ORDER BY participant_id, position"
        )
        return [dict(r) for r in rows]

    def close(self) -> None:
        self.db.close()
