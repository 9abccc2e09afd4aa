"""Study results: win rate of personalized vs baseline, exact binomial test, confidence intervals.

Ties are reported and excluded from the binomial test (the usual sign-test convention); the
win rate with ties counted as half a win is reported too. Besides the Wilson interval (which
treats comparisons as independent) a bootstrap over participants is given, because one
participant's answers are correlated and the study's unit of replication is the person.

Exported cells that a spreadsheet would run as a formula (model output included) get a ``'``
prefix; reading a CSV back refuses what export could not have written, naming the line.
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fspo.errors import FspoError

EXPORT_FIELDS = [
    "participant_id",
    "position",
    "item",
    "question",
    "personalized_side",
    "choice",
    "winner",
    "answered_at",
    "shots_used",
    "personalized",
    "baseline",
]
LABEL_FIELDS = ["participant_id", "position", "item", "question", "left_text", "right_text", "choice", "answered_at"]
WINNERS = ("personalized", "baseline", "tie")
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Breakdown:
    participant_id: str
    wins: int = 0
    losses: int = 0
    ties: int = 0

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties


@dataclass
class StudyResult:
    n: int
    wins: int
    losses: int
    ties: int
    win_rate: float | None  # wins / (wins + losses)
    win_rate_ties_half: float | None  # (wins + ties / 2) / n
    p_value: float | None  # exact two-sided binomial test of wins vs losses against 0.5
    wilson_ci: tuple[float, float] | None
    bootstrap_ci: tuple[float, float] | None
    participants: list[Breakdown] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["participants"] = [asdict(p) for p in self.participants]
        return d


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _bootstrap(groups: list[Breakdown], reps: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    groups = [g for g in groups if g.wins + g.losses]
    if len(groups) < 2:
        return None
    rng = random.Random(seed)
    stats = []
    for _ in range(reps):
        sample = [groups[rng.randrange(len(groups))] for _ in groups]
        w = sum(g.wins for g in sample)
        d = w + sum(g.losses for g in sample)
        stats.append(w / d)
    stats.sort()
    return stats[int(0.025 * reps)], stats[min(reps - 1, int(0.975 * reps))]


def analyze(rows: Iterable[dict]) -> StudyResult:
    """Rows as exported (``winner`` in personalized/baseline/tie; unanswered rows are skipped)."""
    from scipy.stats import binomtest

    per: dict[str, Breakdown] = {}
    for row in rows:
        winner = row.get("winner") or ""
        if winner not in ("personalized", "baseline", "tie"):
            continue
        b = per.setdefault(str(row["participant_id"]), Breakdown(str(row["participant_id"])))
        if winner == "personalized":
            b.wins += 1
        elif winner == "baseline":
            b.losses += 1
        else:
            b.ties += 1
    parts = sorted(per.values(), key=lambda b: (len(b.participant_id), b.participant_id))
    wins, losses, ties = (sum(getattr(b, k) for b in parts) for k in ("wins", "losses", "ties"))
    decided, n = wins + losses, wins + losses + ties
    return StudyResult(
        n=n,
        wins=wins,
        losses=losses,
        ties=ties,
        win_rate=wins / decided if decided else None,
        win_rate_ties_half=(wins + ties / 2) / n if n else None,
        p_value=float(binomtest(wins, decided, 0.5).pvalue) if decided else None,
        wilson_ci=wilson(wins, decided),
        bootstrap_ci=_bootstrap(parts),
        participants=parts,
    )


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a file written by ``fspo study export``, or a one-line error naming the line."""
    rows = []
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames
            if not fields:
                raise FspoError(f"{path}: empty; expected a CSV written by 'fspo study export'")
            missing = [k for k in ("participant_id", "winner") if k not in fields]
            if missing:
                raise FspoError(f"{path}: no {' or '.join(missing)} column; expected a file from 'fspo study export'")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or None in row.values():
                    raise FspoError(f"{where}: expected {len(fields)} fields like the header")
                if row["winner"] not in ("", *WINNERS):
                    raise FspoError(
                        f"{where}: winner: expected one of {', '.join(WINNERS)} or empty, got {row['winner']!r}"
                    )
                if row["winner"] and not row["participant_id"].strip():
                    raise FspoError(f"{where}: participant_id: empty")
                rows.append(row)
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 1
        raise FspoError(f"{path}:{line}: malformed CSV: {exc}") from None
    except UnicodeDecodeError:
        raise FspoError(f"{path}: not UTF-8 text; expected a CSV written by 'fspo study export'") from None
    except OSError as exc:
        raise FspoError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return rows


def neutralize(value):
    """A cell a spreadsheet will show, not run: text that starts like a formula gets a ``'`` prefix
    (leading spaces and newlines are looked past, as some spreadsheets do)."""
    if isinstance(value, str) and value and (value[0] in FORMULA_START or value.lstrip(" \n")[:1] in FORMULA_START):
        return "'" + value
    return value


def write_csv(path: str | Path, rows: list[dict], fields: list[str]) -> None:
    """Write the rows atomically (a temp file next to ``path``, renamed; removed on failure)."""
    from fspo.data.io import write_text_atomic

    if Path(path).is_dir():
        raise FspoError(f"{path}: is a folder; give a file name for the CSV")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: neutralize(v) for k, v in row.items()} for row in rows)
    try:
        write_text_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise FspoError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_report(r: StudyResult) -> str:
    lines = [
        f"comparisons answered: {r.n} (personalized wins {r.wins}, baseline wins {r.losses}, ties {r.ties})",
        f"participants: {len(r.participants)}",
        f"win rate (ties excluded): {_pct(r.win_rate)}",
        f"win rate (ties count half): {_pct(r.win_rate_ties_half)}",
    ]
    if r.wilson_ci:
        lines.append(f"95% CI, Wilson: {_pct(r.wilson_ci[0])} .. {_pct(r.wilson_ci[1])}")
    if r.bootstrap_ci:
        lines.append(f"95% CI, bootstrap over participants: {_pct(r.bootstrap_ci[0])} .. {_pct(r.bootstrap_ci[1])}")
    if r.p_value is not None:
        lines.append(f"exact binomial test vs 50% (two-sided): p = {r.p_value:.4g}")
    if r.participants:
        lines.append("")
        lines.append(f"{'participant':>12} {'wins':>5} {'losses':>6} {'ties':>5} {'win rate':>9}")
        for b in r.participants:
            rate = b.wins / (b.wins + b.losses) if b.wins + b.losses else None
            lines.append(f"{b.participant_id:>12} {b.wins:>5} {b.losses:>6} {b.ties:>5} {_pct(rate):>9}")
    return "\n".join(lines)
