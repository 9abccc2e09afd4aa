"""Reward-accuracy scoring time with and without shared-shot trees, demo-sized (one run, ratios).

Scores the same queries (``--queries`` per user, evenly spaced, as the eval picks them) of every
user of ``--data`` under one model (the log-likelihood comparison, a fresh cache each time), with
the scorer's trees off (``queries_per_tree 1``) and on (8), for two kinds of episodes:
- ``per-query shots``: the eval's own episodes (:func:`fspo.eval.generate.select_episodes`: each
  query's N shots sampled separately), so trees find (almost) nothing to share;
- ``shared shots``: the same queries, and one seeded set of N shots per user (none of them asks one
  of the user's scored questions), so a user's queries form one tree.
Within a kind the accuracies must be identical (trees are exact); between the kinds they differ
(other shots are shown).

    python bench/eval_trees.py                      # smollm2, examples/reviews, 4 shots, 3 queries per user
    python bench/eval_trees.py --model tiny
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def shared_shot_episodes(episodes, records, n_shots: int, seed: int):
    """The same queries; each user's episodes get one seeded set of shots from the user's other questions."""
    from fspo.data.episodes import Episode

    by_user: dict[str, list] = {}
    for e in episodes:
        by_user.setdefault(e.user_id, []).append(e)
    out = []
    for user, eps in by_user.items():
        asked = {e.query.prompt.strip() for e in eps}
        pool = sorted(
            (r for r in records if r.user_id == user and r.prompt.strip() not in asked),
            key=lambda r: (r.prompt, r.chosen, r.rejected),
        )
        shots = tuple(random.Random(f"bench-eval-trees:{seed}:{user}").sample(pool, min(n_shots, len(pool))))
        out += [Episode(user, shots, e.query) for e in eps]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default="examples/reviews")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--queries", type=int, default=3, help="queries per user (the demo's eval_queries)")
    ap.add_argument("--batch-size", type=int, default=4, help="rows per forward (the eval's batch_size // 2)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from fspo.data.io import load_data
    from fspo.eval.generate import ModelPool, select_episodes
    from fspo.eval.reward_accuracy import Scorer, accuracy_point, margins
    from fspo.llm.cache import CallCache

    data = load_data(args.data)
    records = list(data.prefs)
    descriptions = {u.user_id: u.description for u in data.users.values() if u.description}
    per_query = select_episodes(records, args.shots, args.seed, 0, args.queries)
    kinds = {
        "per-query shots": per_query,
        "shared shots": shared_shot_episodes(per_query, records, args.shots, args.seed),
    }
    pool = ModelPool()
    pool.get(args.model)  # load before timing
    scorer = Scorer(args.model, None, "fspo", "mean")
    print(
        f"torch {torch.__version__}; threads {torch.get_num_threads()}; model {args.model}; {args.data}: "
        f"{len({e.user_id for e in per_query})} users x {args.queries} queries = {len(per_query)} episodes, "
        f"{args.shots} shots; batch {args.batch_size} rows"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind, eps in kinds.items():
            out = {}
            for k in (1, 8, 1, 8):  # alternated, best of two
                cache = CallCache(Path(tmp) / f"{kind}-{k}-{time.perf_counter_ns()}.sqlite")
                t = time.perf_counter()
                m, users, kept = margins(scorer, eps, pool, cache, args.max_length, descriptions, args.batch_size, k)
                seconds = time.perf_counter() - t
                point = accuracy_point(m, users, kept)
                if k not in out or seconds < out[k][0]:
                    out[k] = (seconds, point["accuracy"], point["correct"], m)
            same = out[1][2] == out[8][2] and all((a > 0) == (b > 0) for a, b in zip(out[1][3], out[8][3]))
            diff = max(abs(a - b) for a, b in zip(out[1][3], out[8][3]))
            print(
                f"{kind:>15}: trees off {out[1][0]:6.1f} s, trees on {out[8][0]:6.1f} s, "
                f"ratio {out[1][0] / out[8][0]:.2f}x; accuracy {out[1][1]:.3f} / {out[8][1]:.3f} "
                f"(identical: {same}; max |margin difference| {diff:.1e})"
            )


if __name__ == "__main__":
    main()
