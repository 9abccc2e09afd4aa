"""Eval lanes: reward-accuracy scoring beside answer generation, each lane on half the CPU threads.

Instead of splitting every op across torch's intra-op threads, the eval runs two stages at once on
one thread each (issue 18): small-batch decoding (hundreds of small ops per token) splits poorly,
and on a 2-core machine shared with another job two intra-op threads wait on each other (the fast
demo's eval ran 3.77x faster there; docs/benchmarks.md, which also says why an idle machine gains
less). Lane B is the generation stage itself, method by method and
chunk by chunk as in a sequential eval. Lane A scores reward accuracy, then helps lane B: it
computes the chunks (generation batches) lane B has not reached yet, from the last one back, and
hands them over; lane B takes a handed-over chunk instead of computing it, and commits every chunk
to the cache in its own order (:class:`fspo.llm.cache.ChunkShare`).

The results are those of the sequential eval, bit for bit: each lane has its own models and
tokenizers (each model loaded once per lane), scoring and generation write different cache keys, a
helped chunk holds the same prompts with the same seed as lane B would batch them (the helper
knows which keys lane B will find cached, :func:`owner_snapshots`), lane B's cache reads and
writes happen in the sequential order, and a float32 CPU kernel gives the same bits on one
thread as on two (threads split a GEMM's or an attention's outputs, not their sums: checked on
the demo's eval, docs/benchmarks.md, and by tests/test_eval_lanes.py).

Lanes run only on a CPU with at least two torch threads; elsewhere, or with
``FSPO_EVAL_SEQUENTIAL=1``, the stages run one after the other as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fspo.eval.generate import LazyLocalBackend, ModelPool, greedy
from fspo.llm.cache import CachedBackend, CallCache, ChunkShare

SEQUENTIAL_ENV = "FSPO_EVAL_SEQUENTIAL"


def lanes_enabled(device: str) -> bool:
    """Whether :func:`side_by_side` would run its jobs in parallel lanes on ``device``."""
    import torch

    from fspo.models.registry import resolve_device

    if os.environ.get(SEQUENTIAL_ENV, "") not in ("", "0"):
        return False
    return resolve_device(device).type == "cpu" and torch.get_num_threads() >= 2


def side_by_side(jobs: Sequence[Callable[[], Any]], parallel: bool) -> list[Any]:
    """Each job's result, in order. ``parallel``: one Python thread per job, torch's intra-op
    threads split evenly between them while they run (restored after); the first job's error
    is raised once every job has stopped."""
    if not parallel or len(jobs) < 2:
        return [job() for job in jobs]
    import torch

    threads_before = torch.get_num_threads()
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # re-raised in the calling thread
            errors[i] = exc

    workers = [threading.Thread(target=run, args=(i,), daemon=True, name=f"eval-lane-{i}") for i in range(len(jobs))]
    torch.set_num_threads(max(1, threads_before // len(jobs)))
    try:
        for w in workers:
            w.start()
        for w in workers:
            while w.is_alive():  # a timed join keeps Ctrl-C working
                w.join(0.5)
    finally:
        torch.set_num_threads(threads_before)
    for exc in errors:
        if exc is not None:
            raise exc
    return results


@dataclass(frozen=True)
class SharedRow:
    """A method row whose answers a local model generates: its prompts, in the order (and so the
    chunks) of the generation stage, and the chunks it shares with the helping lane."""

    method: str
    spec: str
    prompts: list[str]
    max_new_tokens: int
    batch_size: int
    share: ChunkShare = field(default_factory=ChunkShare)


def owner_snapshots(rows: Sequence[SharedRow], pool: ModelPool, cache: CallCache) -> dict[str, set[str]]:
    """Per row, the keys the generation stage finds cached when it reaches the row: those cached
    now and every earlier row's (a prompt an earlier row asked is not generated again). Taken before
    the stage starts: the helper computes a row's chunks before the stage reaches it."""
    known = set(cache.get_many([k for row in rows for k in _keys(row, pool, cache)]))
    out = {}
    for row in rows:
        out[row.method] = set(known)
        known |= set(_keys(row, pool, cache))
    return out


def help_generate(rows: Sequence[SharedRow], known: dict[str, set[str]], pool: ModelPool, cache: CallCache) -> None:
    """The helping lane: the chunks of ``rows`` the generation stage has not reached, last first,
    with ``pool``'s models, handed over to the stage (:class:`fspo.llm.cache.ChunkShare`)."""
    for row in reversed(rows):
        backend = CachedBackend(LazyLocalBackend(pool, row.spec, row.batch_size), cache, share=row.share)
        backend.help_generate(row.prompts, greedy(row.max_new_tokens), known[row.method])


def _keys(row: SharedRow, pool: ModelPool, cache: CallCache) -> list[str]:
    backend = CachedBackend(LazyLocalBackend(pool, row.spec, row.batch_size), cache)
    return backend.generate_keys(row.prompts, greedy(row.max_new_tokens))
