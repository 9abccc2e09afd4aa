"""A content-addressed cache of every backend call (SQLite), so a killed run resumes for free.

The key of a call is the sha256 of (backend name, full prompt, generation params, salt). The salt
tells apart repeated samples of the same prompt. Calls run in fixed chunks whose results are
committed in one transaction: a chunk is either fully stored or not at all, and a resumed run
sends exactly the chunks the killed run did not finish. Each chunk's sampling seed is derived
from its keys, so its outputs do not depend on what ran before it (a resumed run reproduces an
uninterrupted one byte for byte, also with sampling on a local model).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from fspo.llm.base import Backend, GenerationParams, Prompt


def call_key(backend_name: str, prompt: Prompt, params: dict, salt: str = "", kind: str = "generate") -> str:
    blob = json.dumps([kind, backend_name, prompt, params, salt], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CallCache:
    """SQLite key -> JSON value store; WAL mode so a kill -9 never corrupts committed rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, object]:
        found: dict[str, object] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                part = list(keys[start : start + 500])
                marks = ",".join("?" * len(part))
                for k, v in self._db.execute(f"SELECT key, value FROM calls WHERE key IN ({marks})", part):
                    found[k] = json.loads(v)
        return found

    def put_many(self, items: dict[str, object]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)",
                [(k, json.dumps(v, ensure_ascii=False)) for k, v in items.items()],
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class ChunkShare:
    """The chunks of one ``CachedBackend`` call, split between its owner and one helper thread.

    The owner runs the call as usual, chunk by chunk in order; before computing a chunk it
    ``take``s it: the values the helper computed for it (waiting while the helper is at it), or
    None to compute it itself. The helper (``CachedBackend.help_generate`` on its own model)
    ``claim``s chunks from the end, computes them exactly as the owner would and ``hand_over``s the
    values. The owner commits every chunk, in its order, so the cache and the results are those of
    the owner alone (eval lanes, fspo.eval.lanes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._claimed: set[int] = set()
        self._values: dict[int, list | None] = {}

    def claim(self, chunk: int) -> bool:
        """Helper: True if it may compute ``chunk`` (the owner has not taken it)."""
        with self._cond:
            if chunk in self._claimed:
                return False
            self._claimed.add(chunk)
            return True

    def hand_over(self, chunk: int, values: list | None) -> None:
        with self._cond:
            self._values[chunk] = values
            self._cond.notify_all()

    def take(self, chunk: int) -> list | None:
        """Owner: the helper's values for ``chunk``, or None when the owner computes it."""
        with self._cond:
            if chunk not in self._claimed:
                self._claimed.add(chunk)
                return None
            while chunk not in self._values:
                self._cond.wait()
            return self._values[chunk]


class CachedBackend:
    """Wrap a backend: replay cached calls, run and commit the rest chunk by chunk.

    ``hits`` and ``misses`` count prompts served from the cache and sent to the backend.
    """

    def __init__(
        self,
        backend: Backend,
        cache: CallCache,
        chunk_size: int | None = None,
        progress: bool = True,
        share: ChunkShare | None = None,
    ):
        self.backend = backend
        self.cache = cache
        self.name = backend.name
        self.chunk_size = chunk_size or int(getattr(backend, "batch_size", 8) or 8)
        self.progress = progress
        self.hits = 0
        self.misses = 0
        self.share = share  # chunks a helper may compute for this call (see ChunkShare)

    @property
    def can_score_choices(self) -> bool:
        return callable(getattr(self.backend, "choice_logprobs", None))

    def _chunks(self, n: int) -> list[range]:
        return [range(s, min(n, s + self.chunk_size)) for s in range(0, n, self.chunk_size)]

    def _run(self, keys: list[str], desc: str | None, compute) -> list:
        cached = self.cache.get_many(keys)
        results = [cached.get(k) for k in keys]
        chunks = self._chunks(len(keys))
        todo = [j for j, c in enumerate(chunks) if any(keys[i] not in cached for i in c)]
        self.hits += sum(1 for k in keys if k in cached)
        bar = tqdm(total=len(keys), desc=desc, disable=not (self.progress and desc), unit="call", leave=True)
        bar.update(len(keys) - sum(len(chunks[j]) for j in todo))
        for j in todo:
            chunk = chunks[j]
            idx = [i for i in chunk if keys[i] not in cached]
            chunk_seed = int(hashlib.sha256("".join(keys[i] for i in chunk).encode()).hexdigest()[:8], 16)
            handed = self.share.take(j) if self.share is not None else None
            values = handed if handed is not None else compute(idx, chunk_seed)
            new = {}
            for i, v in zip(idx, values):
                results[i] = v
                new[keys[i]] = v
            self.cache.put_many(new)
            self.misses += len(idx)
            bar.update(len(chunk))
        bar.close()
        return results

    def _help(self, keys: list[str], known: Collection[str], compute) -> None:
        """Compute, last chunk first, the chunks of a call that ``self.share``'s owner has not
        reached yet, and hand them over (not to the cache: the owner commits them in its order).
        ``known``: the keys the owner finds cached when its call starts; a chunk is computed exactly
        as the owner would compute it (the same prompts, the same seed)."""
        for j, chunk in reversed(list(enumerate(self._chunks(len(keys))))):
            idx = [i for i in chunk if keys[i] not in known]
            if not idx or not self.share.claim(j):
                continue
            chunk_seed = int(hashlib.sha256("".join(keys[i] for i in chunk).encode()).hexdigest()[:8], 16)
            values = None
            try:
                values = compute(idx, chunk_seed)
            finally:
                self.share.hand_over(j, values)  # None (an error): the owner computes it

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams,
        salts: Sequence[str] | None = None,
        desc: str | None = None,
    ) -> list[str]:
        """Like ``Backend.generate``; ``salts`` distinguish repeated samples of one prompt."""
        keys = self.generate_keys(prompts, params, salts)
        return self._run(keys, desc, self._generate_fn(prompts, params))

    def help_generate(
        self, prompts: Sequence[Prompt], params: GenerationParams, known: Collection[str], salts=None
    ) -> None:
        """The helper's side of the owner's ``generate`` of the same prompts (see ``_help``)."""
        self._help(self.generate_keys(prompts, params, salts), known, self._generate_fn(prompts, params))

    def generate_keys(
        self, prompts: Sequence[Prompt], params: GenerationParams, salts: Sequence[str] | None = None
    ) -> list[str]:
        """The cache key of each prompt's generation."""
        salts = list(salts) if salts is not None else [""] * len(prompts)
        pdict = params.to_dict()
        return [call_key(self.name, p, pdict, s) for p, s in zip(prompts, salts)]

    def _generate_fn(self, prompts: Sequence[Prompt], params: GenerationParams):
        def compute(idx: list[int], chunk_seed: int) -> list[str]:
            seeded = replace(params, seed=(params.seed * 1_000_003 + chunk_seed) % (2**31))
            return list(self.backend.generate([prompts[i] for i in idx], seeded))

        return compute

    def choice_logprobs(
        self, prompts: Sequence[Prompt], choices: Sequence[str], prefix: str = "", desc: str | None = None
    ) -> list[list[float]]:
        keys = [call_key(self.name, p, {"choices": list(choices), "prefix": prefix}, kind="choice") for p in prompts]

        def compute(idx: list[int], _seed: int) -> list[list[float]]:
            return self.backend.choice_logprobs([prompts[i] for i in idx], choices, prefix=prefix)

        return self._run(keys, desc, compute)
