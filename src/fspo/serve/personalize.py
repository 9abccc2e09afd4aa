"""The personalization engine shared by ``fspo personalize``, ``fspo serve`` and ``fspo study``.

A user's few-shot context (their labeled pairs) is the long, stable part of every prompt; the
question is short. So the engine keeps, per user, the KV cache of the prompt's token ids up to
the end of the shots (a bounded LRU), and a repeat question only encodes the question. Reuse is
decided by comparing token ids, never by trusting a key alone: a cache entry is used only if its
ids are an exact prefix of the new prompt's ids, so a stale entry (the user changed their
preferences) or a tokenization difference at the boundary silently falls back to recomputing.

:meth:`Engine.stream` yields the answer while it is generated (the same ``generate`` call with a
token streamer, so a streamed answer equals the non-streamed one, cache included).
"""

from __future__ import annotations

import copy
import inspect
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fspo.data.prompts import ZEROSHOT, layout_of, parse_generation, render_shots
from fspo.data.runs import ResolvedModel
from fspo.data.schema import PreferenceRecord
from fspo.data.truncation import encode_prompt, fit_generation_prompt
from fspo.errors import FspoError
from fspo.llm.base import GenerationParams, apply_stops
from fspo.llm.local import generate_kwargs

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


@dataclass
class _Entry:
    ids: list[int]
    cache: object


class PrefixCache:
    """A bounded LRU of per-user KV caches. Not thread-safe on its own: the engine holds a lock."""

    def __init__(self, max_users: int = 32) -> None:
        self.max_users = max_users
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, user_id: str) -> _Entry | None:
        entry = self._entries.get(user_id)
        if entry is not None:
            self._entries.move_to_end(user_id)
        return entry

    def put(self, user_id: str, entry: _Entry) -> None:
        if self.max_users <= 0:
            return
        self._entries[user_id] = entry
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.max_users:
            self._entries.popitem(last=False)

    def drop(self, user_id: str) -> None:
        self._entries.pop(user_id, None)

    def users(self) -> list[str]:
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


class _Tokens:
    """A ``generate`` streamer that forwards each step's new token ids to a queue (the prompt's first
    ``put`` is skipped)."""

    def __init__(self, events: queue.Queue) -> None:
        self.events = events
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.events.put(("tokens", value.reshape(-1).tolist()))

    def end(self) -> None:
        pass


class _Cancelled:
    """A stopping criterion that ends generation once ``event`` is set (the stream's reader left)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Engine:
    """Generate personalized answers from a user's preference pairs with one loaded model."""

    def __init__(self, model, tokenizer, info: ResolvedModel, cache_users: int = 32) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.cache = PrefixCache(cache_users)
        self._lock = threading.Lock()
        # transformers renamed ``past_key_values`` to ``cache``; support both spellings.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def load(cls, info: ResolvedModel, cache_users: int = 32, dtype: str = "float32", device: str = "auto") -> Engine:
        """Load ``info``'s model on ``device`` (auto: cuda, else mps, else cpu) in ``dtype``."""
        from fspo.models.registry import load_model

        model, tok = load_model(info.spec, dtype=dtype, device=device)
        return cls(model, tok, info, cache_users)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---- prompts -------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(encode_prompt(self.tokenizer, text))

    def render(
        self, shots: Sequence[PreferenceRecord], question: str, max_new_tokens: int = 128, layout: str | None = None
    ) -> Rendered:
        """The prompt for ``question`` with the most recent ``n_shots`` shots that fit ``max_length``
        (the same fitting and encoding as training and eval). The question is never cut; if even
        the bare question does not fit, that is the caller's error."""
        spec = layout_of(layout or self.info.layout)
        available = list(shots)[-self.info.n_shots :] if self.info.n_shots and spec.shows_shots else []
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

    # ---- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def _prefill(self, ids: list[int]):
        from transformers import DynamicCache

        cache = DynamicCache()
        self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, **{self._cache_kw: cache})
        return cache

    @torch.no_grad()
    def _decode(
        self, ids: list[int], params: GenerationParams, cache=None, streamer=None, stop=None, stops=STOP_STRINGS
    ) -> list[int]:
        tok = self.tokenizer
        kwargs = generate_kwargs(params, tok)
        if stops:
            kwargs |= {"stop_strings": list(stops), "tokenizer": tok}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if streamer is not None:
            kwargs["streamer"] = streamer
        if stop is not None:
            kwargs["stopping_criteria"] = [_Cancelled(stop)]
        input_ids = torch.tensor([ids], device=self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(params.seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        return out[0, len(ids) :].tolist()

    def _run(self, user_id: str, rendered: Rendered, params: GenerationParams, use_cache: bool, **stream) -> tuple:
        """``(cached_tokens, new_ids)``: one generation under the model lock, through the user's prefix cache."""
        with self._lock:
            if use_cache and rendered.prefix_text:
                entry, hit = self._cached_prefix(user_id, rendered)
                # Generation extends the cache in place, so it runs on a copy (cheap next to re-encoding).
                work = copy.deepcopy(entry.cache) if entry.cache is not None else None
                return (len(entry.ids) if hit else 0), self._decode(rendered.ids, params, work, **stream)
            return 0, self._decode(rendered.ids, params, **stream)

    def _finish(self, rendered: Rendered, extract, cached: int, new: list[int], start: float) -> Personalized:
        raw, answer, description = extract(self.tokenizer.decode(new, skip_special_tokens=True))
        return Personalized(
            answer=answer,
            description=description,
            raw=raw,
            prompt=rendered.text,
            shots_used=rendered.shots_used,
            shots_available=rendered.shots_available,
            prompt_tokens=len(rendered.ids),
            cached_tokens=cached,
            completion_tokens=len(new),
            seconds=time.perf_counter() - start,
        )

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
        rendered = self.render(shots, question, params.max_new_tokens, layout)
        start = time.perf_counter()
        cached, new = self._run(user_id, rendered, params, use_cache)
        return self._finish(rendered, _personalized(layout), cached, new, start)

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

        The prompt is rendered now, so a question that does not fit raises here, before any output.
        Generation runs in a worker thread (holding the model lock) with a token streamer; closing the
        iterator early (a client that went away) stops the generation at the next token.
        """
        params = params or GenerationParams()
        layout = layout or self.info.layout
        rendered = self.render(shots, question, params.max_new_tokens, layout)
        extract = _personalized(layout)
        return self._stream(user_id, rendered, params, use_cache, extract, lambda text: extract(text)[1])

    # ---- raw completion (the model as a plain completions engine) -------------------------
    def render_raw(self, text: str, max_new_tokens: int) -> Rendered:
        """``text`` as the whole prompt (no shots added), or an error if it does not fit ``max_length``."""
        ids = self._encode(text)
        if len(ids) + max_new_tokens > self.info.max_length:
            raise FspoError(
                f"the prompt is {len(ids)} tokens; with {max_new_tokens} new tokens it exceeds the model's "
                f"max_length of {self.info.max_length}"
            )
        return Rendered(text, "", ids, 0, 0)

    def complete(self, text: str, params: GenerationParams | None = None) -> Personalized:
        """Continue ``text`` as given, cut at ``params.stop`` (no user, no shots, no answer parsing): what
        a vLLM-style completions endpoint returns, for clients that render FSPO prompts themselves."""
        params = params or GenerationParams()
        rendered = self.render_raw(text, params.max_new_tokens)
        start = time.perf_counter()
        _, new = self._run("", rendered, params, False, stops=params.stop)
        return self._finish(rendered, _raw(params.stop), 0, new, start)

    def stream_complete(self, text: str, params: GenerationParams | None = None) -> Iterator[str | Personalized]:
        """:meth:`complete`, streamed like :meth:`stream` (a possible stop string's start is held back)."""
        params = params or GenerationParams()
        rendered = self.render_raw(text, params.max_new_tokens)
        extract = _raw(params.stop)

        def settled(raw: str) -> str:
            answer = extract(raw)[1]
            held = max((k for stop in params.stop for k in range(1, len(stop)) if answer.endswith(stop[:k])), default=0)
            return answer[: len(answer) - held]

        return self._stream("", rendered, params, False, extract, settled, stops=params.stop)

    def _stream(self, user_id, rendered: Rendered, params, use_cache: bool, extract, settled, stops=STOP_STRINGS):
        """Yield ``settled(text so far)`` as it grows, then the :class:`Personalized` result."""
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        start = time.perf_counter()
        tokens = _Tokens(events)

        def work() -> None:
            try:
                events.put(
                    ("done", self._run(user_id, rendered, params, use_cache, streamer=tokens, stop=stop, stops=stops))
                )
            except BaseException as exc:  # re-raised in the consumer
                events.put(("error", exc))

        worker = threading.Thread(target=work, name="fspo-stream", daemon=True)
        worker.start()
        new: list[int] = []
        sent = ""
        try:
            while True:
                kind, value = events.get()
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
            cached, new = value
            result = self._finish(rendered, extract, cached, new, start)
            if result.answer.startswith(sent) and len(result.answer) > len(sent):
                yield result.answer[len(sent) :]
            elif not result.answer.startswith(sent):  # never seen; keep the streamed text the truth
                result = _replace_answer(result, sent)
            yield result
        finally:
            stop.set()

    def baseline(self, question: str, params: GenerationParams | None = None) -> Personalized:
        """The same model without the user's context (the zero-shot layout): a study's baseline arm."""
        return self.generate("", [], question, params, use_cache=False, layout=ZEROSHOT.name)

    def invalidate(self, user_id: str) -> None:
        """Forget a user's cached prefix (after their preferences change or they are deleted)."""
        with self._lock:
            self.cache.drop(user_id)

    def _cached_prefix(self, user_id: str, rendered: Rendered) -> tuple[_Entry, bool]:
        """The user's cache entry if its ids prefix this prompt (a hit), else a freshly encoded one."""
        ids = rendered.ids
        entry = self.cache.get(user_id)
        if entry is not None and len(entry.ids) < len(ids) and ids[: len(entry.ids)] == entry.ids:
            return entry, True
        k = _common_prefix(self._encode(rendered.prefix_text), ids)
        k = min(k, len(ids) - 1)
        entry = _Entry(ids[:k], self._prefill(ids[:k]) if k > 0 else None)
        self.cache.put(user_id, entry)
        return entry, False
