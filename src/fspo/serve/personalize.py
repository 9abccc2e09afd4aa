"""The personalization engine shared by ``fspo personalize``, ``fspo serve`` and ``fspo study``.

A user's few-shot context (their labeled pairs) is the long, stable part of every prompt; the
question is short. So the engine keeps, per user, the KV cache of the prompt's token ids up to
the end of the shots (a bounded LRU) together with those token ids and the text they cover: a
repeat question only encodes (tokenizes and prefills) the question. Reuse is decided by comparing
text and token ids, never by trusting a key alone: a cache entry is used only if its ids are an
exact prefix of the new prompt's ids, so a stale entry (the user changed their preferences) or a
tokenization difference at the boundary silently falls back to recomputing.

Generation goes through one scheduler thread (:mod:`fspo.serve.batching`): requests arriving
together are decoded together, each with its own sampling parameters and stops.
:meth:`Engine.stream` yields the answer while it is generated (the same request with its tokens
forwarded as they are sampled, so a streamed answer equals the non-streamed one, cache included).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fspo.data.prompts import (
    ZEROSHOT,
    generation_prefix,
    layout_of,
    parse_generation,
    render_prompt,
    render_shots,
    wrap_chat,
)
from fspo.data.runs import ResolvedModel
from fspo.data.schema import PreferenceRecord
from fspo.data.truncation import encode_completion, encode_prompt, fit_generation_prompt
from fspo.errors import FspoError
from fspo.llm.base import GenerationParams, apply_stops
from fspo.llm.kv import cache_keyword
from fspo.serve.batching import KV, Batcher, Done, Job

# A generation that starts a new example or task block is finished.
STOP_STRINGS = ("\n# Example", "\n# Task", "\n## Question", "\n## Dispreferred")


@dataclass(frozen=True)
class Rendered:
    """A prompt ready to generate from: the full text and the part that depends only on the shots."""

    text: str
    prefix_text: str
    ids: list[int]
    shots_used: int
    shots_available: int


@dataclass(frozen=True)
class Personalized:
    """One generation with what it was conditioned on and how much of the prompt came from cache."""

    answer: str
    description: str | None
    raw: str
    prompt: str
    shots_used: int
    shots_available: int
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from this user's cache (0 on a miss)
    completion_tokens: int
    seconds: float
    first_token_seconds: float | None = None  # from the request to its first sampled token

    @classmethod
    def of(
        cls,
        rendered: Rendered,
        raw: str,
        answer: str,
        description: str | None,
        tokens: tuple[int, int, int],
        start: float,
        first_token_seconds: float | None = None,
    ) -> Personalized:
        """A result for ``rendered``; ``tokens``: (prompt, cached, completion); ``start``: perf_counter()."""
        prompt_tokens, cached_tokens, completion_tokens = tokens
        return cls(
            answer=answer,
            description=description,
            raw=raw,
            prompt=rendered.text,
            shots_used=rendered.shots_used,
            shots_available=rendered.shots_available,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            completion_tokens=completion_tokens,
            seconds=time.perf_counter() - start,
            first_token_seconds=first_token_seconds,
        )


@dataclass(frozen=True)
class _Entry:
    """A user's cached prefix: its token ids, their KV (never written), the rendered prefix text it was
    made for, and where in the prompt text the ids end (None: unknown, so always re-tokenize)."""

    ids: list[int]
    kv: KV | None
    prefix_text: str = ""
    boundary: int | None = None


class PrefixCache:
    """A bounded LRU of per-user prefix entries, thread-safe. ``drop`` bumps the user's version, and
    ``put`` ignores an entry computed for an older version (a request that began before the user's
    preferences changed cannot store its prefix afterwards)."""

    def __init__(self, max_users: int = 32) -> None:
        self.max_users = max_users
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, user_id: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is not None:
                self._entries.move_to_end(user_id)
            return entry

    def version(self, user_id: str) -> int:
        with self._lock:
            return self._versions.get(user_id, 0)

    def put(self, user_id: str, entry: _Entry, version: int | None = None) -> None:
        with self._lock:
            if self.max_users <= 0 or (version is not None and version != self._versions.get(user_id, 0)):
                return
            self._entries[user_id] = entry
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.max_users:
                self._entries.popitem(last=False)

    def drop(self, user_id: str) -> None:
        with self._lock:
            self._entries.pop(user_id, None)
            self._versions[user_id] = self._versions.get(user_id, 0) + 1

    def users(self) -> list[str]:
        with self._lock:
            return list(self._entries)


def _cut_stops(text: str) -> str:
    for stop in STOP_STRINGS:
        text = text.split(stop)[0]
    return text


def _personalized(layout: str):
    """Generated text -> (raw, answer, description) for an FSPO prompt in ``layout``."""

    def extract(text: str) -> tuple[str, str, str | None]:
        raw = _cut_stops(text)
        return (raw, *parse_generation(raw, layout))

    return extract


def _raw(stops: Sequence[str]):
    """Generated text -> (raw, answer, None) for a raw completion: the text up to the first stop."""

    def extract(text: str) -> tuple[str, str, None]:
        answer = apply_stops(text, stops)
        return answer, answer, None

    return extract


def _replace_answer(result: Personalized, answer: str) -> Personalized:
    from dataclasses import replace

    return replace(result, answer=answer)


class _Stream:
    """A streamed generation: iterates like the generator it wraps; ``close()`` (or being dropped)
    cancels the request even before the first item was asked for (a generator that never started
    would not run its ``finally``)."""

    def __init__(self, items: Iterator, job: Job) -> None:
        self._items = items
        self._job = job

    def __iter__(self) -> _Stream:
        return self

    def __next__(self):
        return next(self._items)

    def close(self) -> None:
        self._job.cancelled.set()
        self._items.close()

    def __del__(self) -> None:
        self._job.cancelled.set()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PromptRenderer:
    """Prompt assembly shared by the in-process :class:`Engine` and the remote engine
    (``fspo.serve.remote``): the same shot choice, fitting and encoding as training and eval.
    Needs ``self.tokenizer`` and ``self.info`` (a :class:`ResolvedModel`)."""

    tokenizer: object
    info: ResolvedModel

    def _encode(self, text: str) -> list[int]:
        return list(encode_prompt(self.tokenizer, text))

    def _shots_in(self, shots: Sequence[PreferenceRecord], spec) -> list[PreferenceRecord]:
        return list(shots)[-self.info.n_shots :] if self.info.n_shots and spec.shows_shots else []

    def render(
        self, shots: Sequence[PreferenceRecord], question: str, max_new_tokens: int = 128, layout: str | None = None
    ) -> Rendered:
        """The prompt for ``question`` with the most recent ``n_shots`` shots that fit ``max_length``
        (the same fitting and encoding as training and eval). The question is never cut; if even
        the bare question does not fit, that is the caller's error."""
        spec = layout_of(layout or self.info.layout)
        available = self._shots_in(shots, spec)
        fitted = fit_generation_prompt(
            self.tokenizer,
            available,
            question,
            spec,
            self.info.max_length - max_new_tokens,
            self.info.chat_template,
        )
        if fitted is None:
            n = len(self._encode(question))
            raise FspoError(
                f"the question is about {n} tokens; with {max_new_tokens} new tokens the prompt exceeds the model's "
                f"max_length of {self.info.max_length}"
            )
        kept = available[len(available) - fitted.n_shots :]
        shots_block = render_shots(kept, spec) if kept else ""
        cut = fitted.text.find(shots_block) + len(shots_block) if shots_block else 0
        return Rendered(fitted.text, fitted.text[:cut], list(fitted.ids), fitted.n_shots, len(list(shots)))

    def render_raw(self, text: str, max_new_tokens: int) -> Rendered:
        """``text`` as the whole prompt (no shots added), or an error if it does not fit ``max_length``."""
        ids = self._encode(text)
        if len(ids) + max_new_tokens > self.info.max_length:
            raise FspoError(
                f"the prompt is {len(ids)} tokens; with {max_new_tokens} new tokens it exceeds the model's "
                f"max_length of {self.info.max_length}"
            )
        return Rendered(text, "", ids, 0, 0)


class Engine(PromptRenderer):
    """Generate personalized answers from a user's preference pairs with one loaded model.

    Thread-safe: any number of threads may call :meth:`generate`, :meth:`stream` and the others at
    once; one scheduler thread runs the model and decodes the requests in flight as one batch (at
    most ``max_batch`` sequences; more wait for a free row)."""

    def __init__(self, model, tokenizer, info: ResolvedModel, cache_users: int = 32, max_batch: int = 16) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.cache = PrefixCache(cache_users)
        self._cache_kw = cache_keyword(model)
        self.batcher = Batcher(self.model, tokenizer, self._cache_kw, max_batch=max_batch)

    @classmethod
    def load(
        cls,
        info: ResolvedModel,
        cache_users: int = 32,
        dtype: str = "float32",
        device: str = "auto",
        max_batch: int = 16,
    ) -> Engine:
        """Load ``info``'s model on ``device`` (auto: cuda, else mps, else cpu) in ``dtype``."""
        from fspo.models.registry import load_model

        model, tok = load_model(info.spec, dtype=dtype, device=device)
        return cls(model, tok, info, cache_users, max_batch)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def close(self) -> None:
        """Stop the scheduler thread (requests still waiting fail)."""
        self.batcher.close()

    # ---- prompts -------------------------------------------------------------------------
    def _render_for(
        self, user_id: str, shots: Sequence[PreferenceRecord], question: str, max_new_tokens: int, layout: str
    ) -> Rendered:
        """:meth:`render`, but when ``user_id``'s cached prefix was made for the same shots, only the
        text after it is tokenized (the cached ids are reused): the result is the same prompt."""
        spec = layout_of(layout)
        entry = self.cache.get(user_id) if user_id else None
        available = self._shots_in(shots, spec)
        if entry is not None and entry.boundary is not None and available:
            body = render_prompt(available, question, spec)
            text = (wrap_chat(self.tokenizer, body) if self.info.chat_template else body) + generation_prefix(spec)
            block = render_shots(available, spec)
            cut = text.find(block) + len(block)
            if text[:cut] == entry.prefix_text and len(text) > entry.boundary:
                ids = entry.ids + list(encode_completion(self.tokenizer, text[entry.boundary :]))
                if len(ids) <= self.info.max_length - max_new_tokens:  # all shots fit: what render keeps
                    return Rendered(text, text[:cut], ids, len(available), len(list(shots)))
        return self.render(shots, question, max_new_tokens, layout)

    # ---- generation ----------------------------------------------------------------------
    def _submit(
        self,
        user_id: str,
        rendered: Rendered,
        params: GenerationParams,
        use_cache: bool,
        stops,
        stream: bool,
        start: float | None = None,
    ) -> Job:
        prefix = None
        if use_cache and rendered.prefix_text:
            version = self.cache.version(user_id)
            prefix = lambda: self._cached_prefix(user_id, rendered, version)  # noqa: E731 (runs in the scheduler)
        job = Job(list(rendered.ids), params, tuple(stops), stream=stream, prefix=prefix)
        if start is not None:  # the time to first token counts from the request (rendering included)
            job.submitted = start
        return self.batcher.submit(job)

    def _run(
        self,
        user_id: str,
        rendered: Rendered,
        params: GenerationParams,
        use_cache: bool,
        stops=STOP_STRINGS,
        start: float | None = None,
    ) -> Done:
        """One generation through the scheduler (and the user's prefix cache): a :class:`Done`."""
        return self._submit(user_id, rendered, params, use_cache, stops, stream=False, start=start).wait()

    def _finish(self, rendered: Rendered, extract, done: Done, start: float) -> Personalized:
        raw, answer, description = extract(self.tokenizer.decode(done.new_ids, skip_special_tokens=True))
        tokens = (len(rendered.ids), done.cached_tokens, len(done.new_ids))
        return Personalized.of(rendered, raw, answer, description, tokens, start, done.first_token_seconds)

    def generate(
        self,
        user_id: str,
        shots: Sequence[PreferenceRecord],
        question: str,
        params: GenerationParams | None = None,
        use_cache: bool = True,
        layout: str | None = None,
    ) -> Personalized:
        """Answer ``question`` for ``user_id`` conditioned on ``shots`` (their pairs, oldest first)."""
        params = params or GenerationParams()
        layout = layout or self.info.layout
        start = time.perf_counter()
        rendered = self._render_for(user_id if use_cache else "", shots, question, params.max_new_tokens, layout)
        done = self._run(user_id, rendered, params, use_cache, start=start)
        return self._finish(rendered, _personalized(layout), done, start)

    def stream(
        self,
        user_id: str,
        shots: Sequence[PreferenceRecord],
        question: str,
        params: GenerationParams | None = None,
        use_cache: bool = True,
        layout: str | None = None,
    ) -> Iterator[str | Personalized]:
        """Like :meth:`generate`, but yield the answer's text as it is generated (``str`` deltas), then
        the :class:`Personalized` result, whose ``answer`` is the concatenation of the deltas.

        The prompt is rendered and the request queued now, so a question that does not fit raises
        here, before any output. Closing the iterator early (a client that went away) takes the
        request out of the batch at the next decode step.
        """
        params = params or GenerationParams()
        layout = layout or self.info.layout
        start = time.perf_counter()
        rendered = self._render_for(user_id if use_cache else "", shots, question, params.max_new_tokens, layout)
        extract = _personalized(layout)
        job = self._submit(user_id, rendered, params, use_cache, STOP_STRINGS, stream=True, start=start)
        return _Stream(self._stream(job, rendered, extract, lambda text: extract(text)[1], start), job)

    # ---- raw completion (the model as a plain completions engine) -------------------------
    def complete(self, text: str, params: GenerationParams | None = None) -> Personalized:
        """Continue ``text`` as given, cut at ``params.stop`` (no user, no shots, no answer parsing): what
        a vLLM-style completions endpoint returns, for clients that render FSPO prompts themselves."""
        params = params or GenerationParams()
        start = time.perf_counter()
        rendered = self.render_raw(text, params.max_new_tokens)
        return self._finish(
            rendered, _raw(params.stop), self._run("", rendered, params, False, params.stop, start), start
        )

    def stream_complete(self, text: str, params: GenerationParams | None = None) -> Iterator[str | Personalized]:
        """:meth:`complete`, streamed like :meth:`stream` (a possible stop string's start is held back)."""
        params = params or GenerationParams()
        start = time.perf_counter()
        rendered = self.render_raw(text, params.max_new_tokens)
        extract = _raw(params.stop)

        def settled(raw: str) -> str:
            answer = extract(raw)[1]
            held = max((k for stop in params.stop for k in range(1, len(stop)) if answer.endswith(stop[:k])), default=0)
            return answer[: len(answer) - held]

        job = self._submit("", rendered, params, False, params.stop, stream=True, start=start)
        return _Stream(self._stream(job, rendered, extract, settled, start), job)

    def _stream(self, job: Job, rendered: Rendered, extract, settled, start: float):
        """Yield ``settled(text so far)`` as it grows, then the :class:`Personalized` result."""
        new: list[int] = []
        sent = ""
        try:
            while True:
                kind, value = job.events.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    break
                new += value
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                    continue
                answer = settled(text)
                # Only a growing answer is sent; the parse can revise its tail (a line turning out to
                # be a header, trailing space), which the final delta below settles.
                if answer.startswith(sent) and len(answer) > len(sent):
                    yield answer[len(sent) :]
                    sent = answer
            result = self._finish(rendered, extract, value, start)
            if result.answer.startswith(sent) and len(result.answer) > len(sent):
                yield result.answer[len(sent) :]
            elif not result.answer.startswith(sent):  # never seen; keep the streamed text the truth
                result = _replace_answer(result, sent)
            yield result
        finally:
            job.cancelled.set()

    def baseline(self, question: str, params: GenerationParams | None = None) -> Personalized:
        """The same model without the user's context (the zero-shot layout): a study's baseline arm."""
        return self.generate("", [], question, params, use_cache=False, layout=ZEROSHOT.name)

    def invalidate(self, user_id: str) -> None:
        """Forget a user's cached prefix (after their preferences change or they are deleted). A request
        already decoding keeps its own copy and finishes unchanged; one that began before this call
        does not store its prefix."""
        self.cache.drop(user_id)

    def _cached_prefix(self, user_id: str, rendered: Rendered, version: int) -> tuple[int, KV | None, bool]:
        """``(n, kv, hit)``: the user's cached prefix if its ids prefix this prompt (a hit), else a
        freshly encoded and prefilled one, stored for the next request. Scheduler thread."""
        ids = rendered.ids
        entry = self.cache.get(user_id)
        if (
            entry is not None
            and entry.kv is not None
            and len(entry.ids) < len(ids)
            and ids[: len(entry.ids)] == entry.ids
        ):
            return len(entry.ids), entry.kv, True
        k = _common_prefix(self._encode(rendered.prefix_text), ids)
        k = min(k, len(ids) - 1)
        if k <= 0:
            return 0, None, False
        kv, _ = self.batcher.prefill(ids[:k])
        entry = _Entry(ids[:k], kv, rendered.prefix_text, self._boundary(rendered, k))
        self.cache.put(user_id, entry, version)
        return k, kv, False

    def _boundary(self, rendered: Rendered, k: int) -> int | None:
        """Where in ``rendered.text`` the first ``k`` ids end, if re-tokenizing only the text after it
        gives exactly the remaining ids (checked); None otherwise (then prompts are encoded whole)."""
        if not getattr(self.tokenizer, "is_fast", False):
            return None
        enc = self.tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        lead = len(rendered.ids) - len(enc["input_ids"])  # a BOS that encode_prompt put in front
        if lead not in (0, 1) or k - 1 - lead < 0 or list(enc["input_ids"]) != rendered.ids[lead:]:
            return None
        boundary = enc["offset_mapping"][k - 1 - lead][1]
        rest = list(encode_completion(self.tokenizer, rendered.text[boundary:]))
        return boundary if rendered.ids[:k] + rest == rendered.ids else None
