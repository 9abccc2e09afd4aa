"""Win-rate statistics: pure functions over per-query outcomes, checked against hand-computed cases.

An outcome is the judged result of one query for one user: 1 = the method's answer won against
the baseline's, 0.5 = tie, 0 = loss. Queries of one user are correlated (same context, same
taste), so the default bootstrap resamples *users* and keeps each user's queries together
(a cluster bootstrap); resampling single queries would understate the width of the interval
when there are few users. Ties count half in the win rate and are left out of the sign test.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

WIN, TIE, LOSS = 1.0, 0.5, 0.0
BOOTSTRAP_UNITS = ("user", "query")


@dataclass(frozen=True)
class Outcome:
    """One judged comparison: ``score`` is 1 (win), 0.5 (tie) or 0 (loss) for the method."""

    user_id: str
    score: float
    flipped: bool = False  # an LLM judge contradicted itself across the two orders

    def __post_init__(self) -> None:
        if self.score not in (WIN, TIE, LOSS):
            raise ValueError(f"score must be 1, 0.5 or 0, got {self.score!r}")


def score_from_preference(pref: int) -> float:
    """+1 (method preferred) / 0 / -1 (baseline preferred) -> 1 / 0.5 / 0."""
    return {1: WIN, 0: TIE, -1: LOSS}[int(pref)]


def win_rate(scores: Sequence[float]) -> float:
    """(wins + 0.5 ties) / n; NaN for no comparisons."""
    return sum(scores) / len(scores) if scores else float("nan")


def counts(scores: Sequence[float]) -> tuple[int, int, int]:
    """(wins, ties, losses)."""
    return (
        sum(1 for s in scores if s == WIN),
        sum(1 for s in scores if s == TIE),
        sum(1 for s in scores if s == LOSS),
    )


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial (sign) test of wins vs losses at p = 0.5; ties are dropped. 1.0 if none."""
    n = wins + losses
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(wins, n, 0.5, alternative="two-sided").pvalue)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ci(
    outcomes: Sequence[Outcome],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "user",
) -> tuple[float, float]:
    """Percentile bootstrap interval of the win rate.

    ``unit="user"`` resamples users with replacement (all of a chosen user's queries come along);
    ``unit="query"`` resamples single comparisons. Seeded with its own RNG: same input, same seed,
    same interval. With one cluster the interval is degenerate (a point), which the report flags.
    """
    if unit not in BOOTSTRAP_UNITS:
        raise ValueError(f"unit must be one of {BOOTSTRAP_UNITS}, got {unit!r}")
    if not outcomes:
        return float("nan"), float("nan")
    if unit == "query":
        clusters = [[o.score] for o in outcomes]
    else:
        groups: dict[str, list[float]] = defaultdict(list)
        for o in outcomes:
            groups[o.user_id].append(o.score)
        clusters = [groups[u] for u in sorted(groups)]
    sums = [sum(c) for c in clusters]
    sizes = [len(c) for c in clusters]
    rng = random.Random(f"fspo-bootstrap:{seed}")
    k = len(clusters)
    stats = []
    for _ in range(n_boot):
        idx = [rng.randrange(k) for _ in range(k)]
        stats.append(sum(sums[i] for i in idx) / sum(sizes[i] for i in idx))
    stats.sort()
    alpha = (1 - level) / 2
    return _percentile(stats, alpha), _percentile(stats, 1 - alpha)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (used for reward accuracy, where items are i.i.d.-ish)."""
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - level) / 2))
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def per_user(outcomes: Sequence[Outcome]) -> dict[str, dict]:
    """Per-user n, wins, ties, losses and win rate (sorted by user id)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for o in outcomes:
        groups[o.user_id].append(o.score)
    out = {}
    for user in sorted(groups):
        w, t, lo = counts(groups[user])
        out[user] = {"n": len(groups[user]), "wins": w, "ties": t, "losses": lo, "win_rate": win_rate(groups[user])}
    return out


def flip_rate(outcomes: Sequence[Outcome]) -> float:
    """Fraction of comparisons where the judge's verdict flipped with the answer order."""
    return sum(o.flipped for o in outcomes) / len(outcomes) if outcomes else float("nan")


def summarize(
    outcomes: Sequence[Outcome], n_boot: int = 2000, seed: int = 0, level: float = 0.95, unit: str = "user"
) -> dict:
    """Everything the report shows for one method against the baseline."""
    scores = [o.score for o in outcomes]
    w, t, lo = counts(scores)
    ci = bootstrap_ci(outcomes, n_boot, seed, level, unit)
    return {
        "n": len(scores),
        "users": len({o.user_id for o in outcomes}),
        "wins": w,
        "ties": t,
        "losses": lo,
        "win_rate": win_rate(scores),
        "ci": list(ci),
        "ci_level": level,
        "ci_unit": unit,
        "n_boot": n_boot,
        "sign_test_p": sign_test(w, lo),
        "flip_rate": flip_rate(outcomes),
        "per_user": per_user(outcomes),
    }
