"""Continuous batching for the serving engine: one scheduler thread owns the model.

Requests are queued as :class:`Job` objects. Between two decode steps the scheduler admits the
waiting jobs (up to ``max_batch`` sequences in flight): each gets its user's cached prefix KV, the
uncached suffixes (the questions, or whole prompts) of jobs admitted together are prefilled
together in one forward (grouped so that padding stays small), and each first token is sampled and
sent at once, so the time to first token is one prefill, not the rest of someone else's answer.
Then they join the running batch. Every decode step runs all sequences in flight as one forward
pass: their KV caches are left-padded to a common width, with an attention mask over the padding
and each sequence's own positions, so a sequence's logits do not depend on its neighbours beyond
floating-point rounding (greedy outputs are tested to be identical batched and alone).

Each job keeps its own sampling parameters (temperature, top-p, seed: a private generator),
its own stops (EOS, stop strings, ``max_new_tokens``) and its own event queue (tokens as they are
sampled, then the result). A job whose reader went away (``cancelled``) leaves the batch at the
next step. A sequence that finishes leaves the batch, and the padding nobody needs is cut.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fspo.llm.base import GenerationParams
from fspo.llm.kv import gqa_attention, growing_layer

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, heads, tokens, dim]


@dataclass
class Done:
    """A finished job: the prompt tokens served from cache, the new token ids, the time to the first."""

    cached_tokens: int
    new_ids: list[int]
    first_token_seconds: float | None


@dataclass
class Job:
    """One generation request. ``prefix`` (run in the scheduler thread) returns ``(n, kv)``: the KV of
    the first ``n`` prompt ids if cached (``kv`` None and ``n`` 0 when there is none) and whether it
    was a hit; the scheduler prefills the rest."""

    ids: list[int]
    params: GenerationParams
    stops: tuple[str, ...] = ()
    stream: bool = False
    prefix: Callable[[], tuple[int, KV | None, bool]] | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def wait(self) -> Done:
        """Block until the job is finished; re-raise its error. Token events are skipped."""
        while True:
            kind, value = self.events.get()
            if kind == "done":
                return value
            if kind == "error":
                raise value


def _cache_of(kv: KV):
    """A ``DynamicCache`` holding ``kv`` without copying it (updates concatenate into new tensors, so
    the given tensors, e.g. a user's cached prefix, are never written)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k[..., :0, :], v[..., :0, :], i)  # sets the layer up (dtype, device)
        cache.layers[i].keys, cache.layers[i].values = k, v
    return cache


def _kv_of(cache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def prefill_groups(suffix_lengths: Sequence[int], max_tokens: int = 4096) -> list[list[int]]:
    """Which admitted jobs to prefill together: indices grouped in order of suffix length, a group
    growing while its padded tokens (rows x longest suffix) stay within twice its real ones and
    ``max_tokens`` (a long cold prompt is prefilled alone rather than padding short ones to its length)."""
    groups: list[list[int]] = []
    real = 0
    for i in sorted(range(len(suffix_lengths)), key=lambda i: suffix_lengths[i]):
        m = suffix_lengths[i]
        if groups:
            padded = (len(groups[-1]) + 1) * m
            if padded <= 2 * (real + m) and padded <= max_tokens:
                groups[-1].append(i)
                real += m
                continue
        groups.append([i])
        real = m
    return groups


class _Seq:
    """A job being decoded: its tokens so far, its sampler and its stop checks."""

    def __init__(self, job: Job, eos: set[int], decode: Callable[[list[int]], str], top_k: int | None, device) -> None:
        self.job = job
        self.eos = eos
        self.decode = decode
        self.top_k = top_k
        self.new: list[int] = []
        self.length = len(job.ids)  # tokens in this sequence's KV once prefilled
        self.first_token: float | None = None
        self.cached = 0
        self.kv: KV | None = None  # its own KV after the prefill, until it joins the batch
        params = job.params
        self.sample = params.temperature > 0
        self.generator = None
        if self.sample:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed)
        stops = [s for s in job.stops if s]
        self.stops = stops
        # Enough trailing tokens to hold any stop string (a character can take up to 4 byte tokens).
        self.window = 4 * max((len(s) for s in stops), default=0) + 4
        tail = job.ids[-8:]
        self.tail_text = decode(tail) if stops else ""

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits: argmax, or a sample (temperature, top-k from the
        model's generation config, top-p, in ``generate``'s order) from this job's own generator."""
        if not self.sample:
            return int(torch.argmax(logits))
        params = self.job.params
        scores = logits / params.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(-1).cumsum(-1)
            remove = cumulative <= (1 - params.top_p)
            remove[-1] = False  # keep at least one token
            scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def push(self, token: int) -> bool:
        """Record ``token`` (sent to a streaming reader); True once the sequence is finished."""
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.job.submitted
        self.new.append(token)
        if self.job.stream:
            self.job.events.put(("tokens", [token]))
        if token in self.eos or len(self.new) >= self.job.params.max_new_tokens:
            return True
        if self.stops:
            text = self.tail_text + self.decode(self.new[-self.window :])
            start = len(self.tail_text)
            # A stop counts once it ends inside the generated text (it may begin in the prompt's tail).
            return any(text.find(s, max(0, start - len(s) + 1)) != -1 for s in self.stops)
        return False

    def done(self) -> Done:
        return Done(self.cached, self.new, self.first_token)


class Batcher:
    """The scheduler thread and its batch. ``submit`` is thread-safe; everything else runs in the thread."""

    def __init__(self, model, tokenizer, cache_kw: str, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model
        self.tokenizer = tokenizer
        self.cache_kw = cache_kw
        self.max_batch = max_batch
        eos = tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        # The running batch (scheduler thread only): sequences, their padded cache and mask.
        self._rows: list[_Seq] = []
        self._cache = None
        self._mask: torch.Tensor | None = None
        self.steps = 0  # decode steps run (for tests and benchmarks)
        self.prefills = 0  # prefill forwards run (alone or together)
        self.group_prefill = True  # False: every admitted job is prefilled alone (for benchmarks)
        self.max_rows_seen = 0

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def active(self) -> int:
        """Sequences in flight (a snapshot; for tests)."""
        return len(self._rows)

    # ---- the public side -------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        if not job.ids:
            raise ValueError("the prompt has no tokens")
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="fspo-batcher", daemon=True)
                self._thread.start()
            self._cv.notify()
        return job

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    # ---- the scheduler thread ----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._rows and not self._closed:
                    self._cv.wait()
                if self._closed:
                    pending, self._pending = list(self._pending), collections.deque()
                    break
                room = self.max_batch - len(self._rows)
                admit = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            live = []
            for job in admit:
                if job.cancelled.is_set():
                    job.events.put(("done", Done(0, [], None)))
                else:
                    live.append(job)
            joined = self._start_all(live)
            try:
                if joined:
                    self._join(joined)
                if self._rows:
                    self._step()
            except BaseException as exc:  # a failed batch step fails every sequence in it
                for seq in self._rows + [s for s in joined if s not in self._rows]:
                    seq.job.events.put(("error", exc))
                self._rows, self._cache, self._mask = [], None, None
        for job in pending + [s.job for s in self._rows]:
            job.events.put(("error", RuntimeError("the engine was closed")))
        self._rows, self._cache, self._mask = [], None, None

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, cache, mask: torch.Tensor | None = None):
        kwargs = {self.cache_kw: cache, "logits_to_keep": 1}
        with gqa_attention(mask is not None and self.device.type == "cpu"):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return out.logits[:, -1, :].float()

    @torch.no_grad()
    def prefill(self, ids: Sequence[int], kv: KV | None = None, start: int = 0):
        """``(kv, logits)``: the KV of ``kv``'s tokens followed by ``ids`` (positions from ``start``),
        and the logits after the last id. Scheduler thread only."""
        cache = _cache_of(kv) if kv is not None else _cache_of([])
        positions = torch.arange(start, start + len(ids), device=self.device).unsqueeze(0)
        logits = self._forward(torch.tensor([list(ids)], device=self.device), positions, cache)
        self.prefills += 1
        return _kv_of(cache), logits[0]

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _start_all(self, jobs: list[Job]) -> list[_Seq]:
        """Prefill the admitted jobs (each through its prefix) and send each its first token; the
        sequences still running. The uncached suffixes of jobs admitted together are prefilled
        together (:func:`prefill_groups`, one forward per group); a job whose prefix or prefill fails
        fails alone (a failed group is retried one job at a time)."""
        ready: list[tuple[Job, int, KV | None, bool]] = []
        for job in jobs:
            try:
                n, kv, hit = job.prefix() if job.prefix is not None else (0, None, False)
            except BaseException as exc:  # this request fails; the others go on
                job.events.put(("error", exc))
                continue
            ready.append((job, n, kv, hit))
        started: list[_Seq] = []
        lengths = [len(job.ids) - n for job, n, _, _ in ready]
        groups = prefill_groups(lengths) if self.group_prefill else [[i] for i in range(len(ready))]
        for group in groups:
            members = [ready[i] for i in group]
            outs = None
            if len(members) > 1:
                try:
                    outs = self._prefill_together([(job.ids[n:], n, kv) for job, n, kv, _ in members])
                except BaseException:  # retried one job at a time below, so an error stays with its job
                    outs = None
            if outs is None:
                outs = [self._prefill_alone(job, n, kv) for job, n, kv, _ in members]
            for (job, n, _, hit), out in zip(members, outs):
                if out is None:
                    continue
                try:
                    seq = _Seq(job, self.eos, self._decode_text, self.top_k, self.device)
                    seq.cached = n if hit else 0
                    seq.kv = out[0]
                    finished = seq.push(seq.pick(out[1]))
                except BaseException as exc:
                    job.events.put(("error", exc))
                    continue
                if finished:
                    job.events.put(("done", seq.done()))
                else:
                    started.append(seq)
        return started

    def _prefill_alone(self, job: Job, n: int, kv: KV | None) -> tuple[KV, torch.Tensor] | None:
        """:meth:`prefill` of ``job``'s suffix; None (the job told) if it fails."""
        try:
            return self.prefill(job.ids[n:], kv, start=n)
        except BaseException as exc:
            job.events.put(("error", exc))
            return None

    @torch.no_grad()
    def _prefill_together(self, rows: list[tuple[Sequence[int], int, KV | None]]) -> list[tuple[KV, torch.Tensor]]:
        """Several sequences' suffixes in one forward: ``rows`` of ``(suffix ids, n, the KV of the first
        n tokens or None)``. Row i holds its prefix KV right-aligned in C = max n columns, a masked
        hole, then its suffix ending at the last column (positions from its own n), so its logits
        after its last id are the last column's. Returns each row's ``(kv, logits)`` as
        :meth:`prefill` does, its KV contiguous (prefix then suffix, the hole dropped)."""
        from transformers import DynamicCache

        width = max(n for _, n, _ in rows)
        span = max(len(ids) for ids, _, _ in rows)
        b, dev = len(rows), self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids_t = torch.full((b, span), pad, dtype=torch.long, device=dev)
        positions = torch.zeros(b, span, dtype=torch.long, device=dev)
        mask = torch.zeros(b, width + span, dtype=torch.long, device=dev)
        for r, (ids, n, _) in enumerate(rows):
            m = len(ids)
            ids_t[r, span - m :] = torch.tensor(list(ids), device=dev)
            positions[r, span - m :] = torch.arange(n, n + m, device=dev)
            mask[r, width - n : width] = 1
            mask[r, width + span - m :] = 1
        cache = DynamicCache()
        if width:
            like = next(kv for _, n, kv in rows if n)
            layers = []
            for i, (k0, v0) in enumerate(like):
                kbuf = k0.new_zeros(b, k0.shape[1], width + span, k0.shape[3])
                vbuf = v0.new_zeros(b, v0.shape[1], width + span, v0.shape[3])
                for r, (_, n, kv) in enumerate(rows):
                    if n:
                        kbuf[r, :, width - n : width] = kv[i][0][0]
                        vbuf[r, :, width - n : width] = kv[i][1][0]
                layers.append(growing_layer(kbuf, vbuf, width))
            cache.layers = layers
        logits = self._forward(ids_t, positions, cache, mask)
        self.prefills += 1
        out = []
        for r, (ids, n, _) in enumerate(rows):
            cols = torch.cat(
                [
                    torch.arange(width - n, width, device=dev),
                    torch.arange(width + span - len(ids), width + span, device=dev),
                ]
            )
            kv = [(keys[r : r + 1, :, cols], values[r : r + 1, :, cols]) for keys, values in _kv_of(cache)]
            out.append((kv, logits[r]))
        return out

    def _join(self, joined: list[_Seq]) -> None:
        """Add prefilled sequences to the batch: every KV copied, left-padded, into new buffers as wide
        as the widest plus room to grow."""
        from transformers import DynamicCache

        old = self._rows if self._cache is not None else []
        old_width = self._mask.shape[1] if old else 0
        width = max([s.length for s in joined] + [old_width])
        rows = old + joined
        room = max(s.job.params.max_new_tokens - len(s.new) for s in rows)
        capacity = width + max(1, min(room, 256))
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        if old:
            mask[: len(old), width - old_width :] = self._mask
        for j, s in enumerate(joined, start=len(old)):
            mask[j, width - s.length :] = 1
        layers = []
        for i, (k0, v0) in enumerate(joined[0].kv):
            kbuf = k0.new_zeros(len(rows), k0.shape[1], capacity, k0.shape[3])
            vbuf = v0.new_zeros(len(rows), v0.shape[1], capacity, v0.shape[3])
            if old:
                keys, values = self._kv_layer(i)
                kbuf[: len(old), :, width - old_width : width] = keys
                vbuf[: len(old), :, width - old_width : width] = values
            for j, s in enumerate(joined, start=len(old)):
                kbuf[j, :, width - s.length : width] = s.kv[i][0][0]
                vbuf[j, :, width - s.length : width] = s.kv[i][1][0]
            layers.append(growing_layer(kbuf, vbuf, width))
        for s in joined:
            s.kv = None
        cache = DynamicCache()
        cache.layers = layers
        self._rows, self._cache, self._mask = rows, cache, mask
        self.max_rows_seen = max(self.max_rows_seen, len(rows))

    def _kv_layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self._cache.layers[i]
        return layer.keys, layer.values

    def _keep(self, keep: list[int]) -> None:
        """Keep only the rows ``keep`` of the batch and cut the padding no row needs any more."""
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = None
        if len(keep) < len(self._rows):
            index = torch.tensor(keep, device=self.device)
            self._rows = [self._rows[i] for i in keep]
            self._mask = self._mask[index]
        cut = self._mask.shape[1] - max(s.length for s in self._rows)
        if cut > 0:
            self._mask = self._mask[:, cut:]
        if index is not None or cut > 0:
            for layer in self._cache.layers:
                layer.select(index, max(cut, 0))

    @torch.no_grad()
    def _step(self) -> None:
        """One decode step for every sequence in flight."""
        live = [i for i, s in enumerate(self._rows) if not s.job.cancelled.is_set()]
        for i, s in enumerate(self._rows):
            if i not in live:
                s.job.events.put(("done", s.done()))
        self._keep(live)
        if not self._rows:
            return
        rows = self._rows
        ids = torch.tensor([[s.new[-1]] for s in rows], device=self.device)
        positions = torch.tensor([[s.length] for s in rows], device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
        logits = self._forward(ids, positions, self._cache, self._mask)
        self.steps += 1
        keep = []
        for i, s in enumerate(rows):
            s.length += 1
            if s.push(s.pick(logits[i])):
                s.job.events.put(("done", s.done()))
            else:
                keep.append(i)
        if len(keep) < len(rows):
            self._keep(keep)
