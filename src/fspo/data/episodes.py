"""Deterministic few-shot episodes: N shots + 1 query pair, all from one user.

Unlike the reference (windows of N+2 rows, one row wasted per window, the query's question
possibly among its own shots), every preference is the query of ``resamples`` episodes, each
with N shots drawn from the same user's *other* questions. Sampling depends only on the seed,
the user id and the row's position, never on global RNG state or hash seeds.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from fspo.data.schema import PreferenceRecord

SHORT_USER_POLICIES = ("shrink", "skip")


@dataclass(frozen=True)
class Episode:
    user_id: str
    shots: tuple[PreferenceRecord, ...]
    query: PreferenceRecord

    @property
    def n_shots(self) -> int:
        return len(self.shots)


@dataclass
class EpisodeSummary:
    """What the sampler did, printed by every run so nothing is dropped silently."""

    n_shots: int
    resamples: int
    episodes: int = 0
    users_full: int = 0
    users_shrunk: int = 0
    users_skipped: int = 0
    queries_skipped: int = 0
    shots_histogram: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        hist = ", ".join(f"{k} shots: {v}" for k, v in sorted(self.shots_histogram.items()))
        return [
            f"episodes: {self.episodes} (N={self.n_shots}, {self.resamples} contexts per query)",
            f"users: {self.users_full} with N shots, {self.users_shrunk} with fewer shots, {self.users_skipped} skipped"
            + (f"; {self.queries_skipped} queries skipped" if self.queries_skipped else ""),
            f"shots per episode: {hist or 'none'}",
        ]


def default_resamples(n_shots: int) -> int:
    """The paper's context resampling: each preference appears in 2(N+1) contexts."""
    return 2 * (n_shots + 1)


def group_by_user(records: Sequence[PreferenceRecord]) -> dict[str, list[PreferenceRecord]]:
    groups: dict[str, list[PreferenceRecord]] = defaultdict(list)
    for rec in records:
        groups[rec.user_id].append(rec)
    return dict(groups)


# Pairs synth adds to teach answering rather than taste (fspo.synth.pipeline): the off-topic pair
# (rejected answers another question) and the repetition pair (rejected loops). Both sides are in
# the user's preferred style, so as a shot they would say nothing about the user and take the place
# of a pair that does; they are only ever queries.
QUERY_ONLY_KINDS = frozenset({"offtopic", "repetition"})


def shot_material(rec: PreferenceRecord) -> bool:
    """Whether a pair may be shown as a shot: any pair except synth's query-only kinds."""
    return rec.meta.get("kind") not in QUERY_ONLY_KINDS


def eligible_shots(user_rows: Sequence[PreferenceRecord], query_index: int) -> list[PreferenceRecord]:
    """The user's rows that may serve as shots for row ``query_index``: any other question's pair
    that is :func:`shot_material`."""
    question = user_rows[query_index].prompt.strip()
    return [
        r for i, r in enumerate(user_rows) if i != query_index and r.prompt.strip() != question and shot_material(r)
    ]


def sample_shots(
    pool: Sequence[PreferenceRecord], n: int, seed: int, user_id: str, query_index: int, context: int
) -> tuple[PreferenceRecord, ...]:
    rng = random.Random(f"fspo:{seed}:{user_id}:{query_index}:{context}")
    return tuple(rng.sample(list(pool), min(n, len(pool))))


def build_episodes(
    records: Sequence[PreferenceRecord],
    n_shots: int = 4,
    resamples: int | None = None,
    seed: int = 0,
    short_users: str = "shrink",
    min_shots: int = 1,
) -> tuple[list[Episode], EpisodeSummary]:
    """Every row becomes the query of ``resamples`` episodes (default 2(N+1)).

    A user with fewer than N+1 usable rows gets as many shots as it has (``shrink``, at least
    ``min_shots``) or is skipped (``skip``). With ``n_shots=0`` every episode is zero-shot.
    The output is deterministic and independent of input order: users sorted by id, then
    rows by content, then contexts.
    """
    if short_users not in SHORT_USER_POLICIES:
        raise ValueError(f"short_users must be one of {SHORT_USER_POLICIES}, got {short_users!r}")
    if n_shots < 0:
        raise ValueError("n_shots must be >= 0")
    resamples = default_resamples(n_shots) if resamples is None else resamples
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    summary = EpisodeSummary(n_shots=n_shots, resamples=resamples)
    episodes: list[Episode] = []
    min_shots = min(min_shots, n_shots)
    for user_id, rows in sorted(group_by_user(records).items()):
        rows = sorted(rows, key=lambda r: (r.prompt, r.chosen, r.rejected))  # content order, not file order
        pools = [eligible_shots(rows, i) for i in range(len(rows))]
        n_user = min((len(p) for p in pools), default=0)
        if n_user >= n_shots:
            summary.users_full += 1
        elif short_users == "skip" or max(len(p) for p in pools) < min_shots:
            summary.users_skipped += 1
            continue
        else:
            summary.users_shrunk += 1
        for qi, query in enumerate(rows):
            if len(pools[qi]) < min_shots:
                summary.queries_skipped += 1
                continue
            for ctx in range(resamples):
                shots = sample_shots(pools[qi], n_shots, seed, user_id, qi, ctx)
                episodes.append(Episode(user_id, shots, query))
                summary.shots_histogram[len(shots)] += 1
    summary.episodes = len(episodes)
    return episodes, summary


def build_tree_episodes(
    records: Sequence[PreferenceRecord],
    n_shots: int = 4,
    queries_per_tree: int = 4,
    resamples: int | None = None,
    seed: int = 0,
    short_users: str = "shrink",
    min_shots: int = 1,
) -> tuple[list[list[Episode]], EpisodeSummary]:
    """Shared-shot trees: groups of up to ``queries_per_tree`` episodes of one user with the same shots.

    For each context (``resamples``, default 2(N+1), as :func:`build_episodes`), a user's rows are
    shuffled (seeded by seed, user and context) and cut into groups of K queries; each group gets N
    shots sampled from the user's rows whose question is none of the group's questions. So every row
    is the query of ``resamples`` episodes, as without trees; only the shots are shared. K shrinks
    to the user's rows minus N (at least 1) so that a user with N+1 rows still gets N shots; a user
    or group with fewer usable rows shrinks N (``shrink``, at least ``min_shots``) or is skipped
    (``skip``). Deterministic and independent of input order."""
    if short_users not in SHORT_USER_POLICIES:
        raise ValueError(f"short_users must be one of {SHORT_USER_POLICIES}, got {short_users!r}")
    if n_shots < 0 or queries_per_tree < 1:
        raise ValueError("n_shots must be >= 0 and queries_per_tree >= 1")
    resamples = default_resamples(n_shots) if resamples is None else resamples
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    summary = EpisodeSummary(n_shots=n_shots, resamples=resamples)
    trees: list[list[Episode]] = []
    min_shots = min(min_shots, n_shots)
    for user_id, rows in sorted(group_by_user(records).items()):
        rows = sorted(rows, key=lambda r: (r.prompt, r.chosen, r.rejected))
        questions = {r.prompt.strip() for r in rows if shot_material(r)}  # questions a shot can come from
        k = max(1, min(queries_per_tree, len(questions) - n_shots))
        usable = len(questions) - 1  # shots a lone query could get: every other question
        if usable >= n_shots:
            summary.users_full += 1
        elif short_users == "skip" or usable < min_shots:
            summary.users_skipped += 1
            continue
        else:
            summary.users_shrunk += 1
        for ctx in range(resamples):
            order = list(range(len(rows)))
            random.Random(f"fspo-tree:{seed}:{user_id}:{ctx}").shuffle(order)
            n_groups = -(-len(order) // k)
            for g in range(n_groups):
                chunk = [rows[i] for i in order[g * len(order) // n_groups : (g + 1) * len(order) // n_groups]]
                asked = {r.prompt.strip() for r in chunk}
                pool = [r for r in rows if r.prompt.strip() not in asked and shot_material(r)]
                if len(pool) < min_shots or (short_users == "skip" and len(pool) < n_shots):
                    summary.queries_skipped += len(chunk)
                    continue
                rng = random.Random(f"fspo-tree:{seed}:{user_id}:{ctx}:{g}")
                shots = tuple(rng.sample(pool, min(n_shots, len(pool))))
                trees.append([Episode(user_id, shots, q) for q in chunk])
                summary.shots_histogram[len(shots)] += len(chunk)
    summary.episodes = sum(len(t) for t in trees)
    return trees, summary


def shuffled(episodes: Sequence[Episode], seed: int) -> list[Episode]:
    """A seeded permutation (the training order); the input is not modified."""
    out = list(episodes)
    random.Random(f"fspo-order:{seed}").shuffle(out)
    return out
