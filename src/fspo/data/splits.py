"""User-level and question-level splits, and the guard that keeps held-out users out of training.

Held-out (unseen) users measure whether the model infers a *new* person from context; held-out
questions of training users measure generalization to new questions for known users.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from fspo.data.schema import PreferenceRecord

if TYPE_CHECKING:
    from fspo.data.io import PreferenceData
from fspo.errors import FspoError


def split_users(user_ids: Iterable[str], heldout_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministically split user ids into (train, held-out); at least one of each when possible."""
    ids = sorted(set(user_ids))
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError("heldout_fraction must be in [0, 1)")
    rng = random.Random(f"fspo-users:{seed}")
    shuffled = ids[:]
    rng.shuffle(shuffled)
    n_heldout = round(len(ids) * heldout_fraction)
    if heldout_fraction > 0 and len(ids) > 1:
        n_heldout = min(max(n_heldout, 1), len(ids) - 1)
    heldout = sorted(shuffled[:n_heldout])
    return [u for u in ids if u not in set(heldout)], heldout


def split_questions(questions: Iterable[str], heldout_fraction: float, seed: int = 0) -> tuple[set[str], set[str]]:
    """Split distinct question texts into (train, held-out); the same question never lands in both.
    Used by synth to mark held-out questions of training users (the paper's setting)."""
    questions = sorted({q.strip() for q in questions})
    rng = random.Random(f"fspo-questions:{seed}")
    rng.shuffle(questions)
    n_heldout = round(len(questions) * heldout_fraction)
    return set(questions[n_heldout:]), set(questions[:n_heldout])


def assign_splits(
    records: Sequence[PreferenceRecord],
    heldout_users: Iterable[str] = (),
    heldout_questions: Iterable[str] = (),
) -> list[PreferenceRecord]:
    """Mark rows of held-out users, and held-out questions of training users, as ``test``."""
    users, questions = set(heldout_users), {q.strip() for q in heldout_questions}
    return [
        replace(r, split="test" if (r.user_id in users or r.prompt.strip() in questions) else "train") for r in records
    ]


def check_disjoint_users(train: Iterable[PreferenceRecord], heldout_user_ids: Iterable[str]) -> None:
    """Raise if any held-out user has a row in the training set (as shot or query, it would leak)."""
    heldout = set(heldout_user_ids)
    leaked = sorted({r.user_id for r in train if r.user_id in heldout})
    if leaked:
        raise FspoError(f"held-out users appear in training data: {', '.join(leaked[:5])}")


def training_records(
    records: Sequence[PreferenceRecord], heldout_user_ids: Iterable[str] = ()
) -> list[PreferenceRecord]:
    """The rows a trainer may see: split ``train`` and not from a held-out user (checked)."""
    heldout = set(heldout_user_ids)
    train = [r for r in records if r.split == "train" and r.user_id not in heldout]
    check_disjoint_users(train, heldout)
    return train


def heldout_user_ids(data: PreferenceData, extra_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training users, held-out users): split=test users plus an extra seeded fraction."""
    all_users = sorted({r.user_id for r in data.prefs})
    marked = {u for u in all_users if data.user_split(u) == "test"}
    marked |= {u for u in all_users if all(r.split == "test" for r in data.prefs if r.user_id == u)}
    rest = [u for u in all_users if u not in marked]
    if extra_fraction > 0:
        rest, extra = split_users(rest, extra_fraction, seed)
        marked |= set(extra)
    return rest, sorted(marked)


def evenly_spaced(items: list, n: int) -> list:
    """A deterministic, spread-out subset (every user represented when n allows)."""
    if n <= 0 or n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def heldout_records(data: PreferenceData, heldout: list[str]) -> list[PreferenceRecord]:
    users = set(heldout)
    return [r for r in data.prefs if r.user_id in users]
