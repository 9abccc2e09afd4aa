"""Voice score: how close each method's answer is to what the person actually preferred.

For every evaluation query the person's held-out real answer is the query's ``chosen`` text (for a
dataset made by ``fspo from-texts`` that is what they wrote themselves; for synthetic data, the
answer they preferred). The score of a method row is the mean MiniLM cosine similarity
(:func:`fspo.models.embeddings.embed`, offline) between its generated answer and that text, and its
difference to the baseline row on the same queries, with a bootstrap interval over users. The same
similarity of the query's ``rejected`` text (another person's answer, or the dispreferred one) is
reported as a reference: an answer as close as that is no closer to this person than to anyone.

It runs for every dataset (it only needs the query's chosen text) and costs one MiniLM pass over
the answers; when the model cannot be loaded the section is left out with a note.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from fspo.errors import FspoError
from fspo.eval.acceptability import sample_indices

METRIC = "minilm_cosine"


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _cosines(pairs: Sequence[tuple[str, str]]) -> list[float]:
    from fspo.models.embeddings import embed

    if not pairs:
        return []
    a = embed([x or " " for x, _ in pairs])
    b = embed([y or " " for _, y in pairs])
    return [float(v) for v in (a * b).sum(-1)]


def _delta_ci(users: Sequence[str], diffs: Sequence[float], n_boot: int, seed: int, level: float) -> list[float]:
    """Percentile bootstrap over users of the mean paired difference (queries of a user stay together)."""
    by_user: dict[str, list[float]] = {}
    for u, d in zip(users, diffs):
        by_user.setdefault(u, []).append(d)
    groups = [by_user[u] for u in sorted(by_user)]
    if not groups:
        return [float("nan"), float("nan")]
    rng = random.Random(f"fspo-voice:{seed}")
    stats = []
    for _ in range(n_boot):
        picked = [x for _ in groups for x in groups[rng.randrange(len(groups))]]
        stats.append(sum(picked) / len(picked))
    stats.sort()
    lo = stats[int((1 - level) / 2 * (len(stats) - 1))]
    hi = stats[int((1 + level) / 2 * (len(stats) - 1))]
    return [lo, hi]


def voice_scores(
    episodes: Sequence,
    gens: Mapping[str, Sequence],
    baseline: str,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    n_samples: int = 3,
) -> dict | None:
    """Per method row: mean similarity of its answers to the person's real text (the query's
    ``chosen``), the paired difference to ``baseline`` with a user-level bootstrap CI, and the share
    of queries where it is closer than the baseline; plus the ``rejected`` reference and sample
    answers shown next to the real text. None when MiniLM cannot be loaded.

    ``episodes``: the eval's query episodes; ``gens``: method -> generations in episode order."""
    real = [ep.query.chosen for ep in episodes]
    users = [ep.user_id for ep in episodes]
    try:
        sims = {name: _cosines([(g.answer, r) for g, r in zip(rows, real)]) for name, rows in gens.items()}
        reference = _cosines([(ep.query.rejected, ep.query.chosen) for ep in episodes])
    except (ImportError, OSError, FspoError):
        return None
    base = sims.get(baseline)
    methods = {}
    for name, s in sims.items():
        per_user: dict[str, list[float]] = {}
        for u, x in zip(users, s):
            per_user.setdefault(u, []).append(x)
        row = {
            "mean": _mean(s),
            "n": len(s),
            "per_user": {u: _mean(v) for u, v in sorted(per_user.items())},
        }
        if base is not None and name != baseline:
            diffs = [a - b for a, b in zip(s, base)]
            row |= {
                "delta": _mean(diffs),
                "delta_ci": _delta_ci(users, diffs, n_boot, seed, level),
                "closer_than_baseline": _mean([float(d > 0) for d in diffs]),
            }
        methods[name] = row
    samples = []
    for i in sample_indices(len(episodes), n_samples):
        ep = episodes[i]
        samples.append(
            {
                "user_id": ep.user_id,
                "question": ep.query.prompt,
                "real": ep.query.chosen,
                "answers": {name: {"answer": gens[name][i].answer, "similarity": sims[name][i]} for name in gens},
            }
        )
    return {
        "metric": METRIC,
        "baseline": baseline,
        "ci_level": level,
        "methods": methods,
        "reference_rejected": _mean(reference),
        "samples": samples,
    }
