"""``fspo serve --engine URL``: users, auth and prompt assembly stay in fspo; an inference engine generates.

:class:`RemoteEngine` has the interface the API and the study use on the in-process
:class:`fspo.serve.personalize.Engine` (``generate``, ``stream``, ``render_raw``, ``complete``,
``stream_complete``, ``baseline``, ``invalidate``, ``info``, ``device``), but instead of running a
model it renders the user's personalized prompt exactly as the in-process engine does (the run
record's layout, shots and token budget, the model's tokenizer, :func:`fit_generation_prompt`) and
sends that text to the engine's ``/v1/completions`` as a raw completion, with the FSPO stop strings.
A user's shots are the long, stable start of every prompt of theirs, so an engine with automatic
prefix caching (``vllm serve --enable-prefix-caching``, llama.cpp's ``--cache-reuse``, another
``fspo serve``) does across many users and GPUs what the in-process per-user KV cache does here.
``cached_tokens`` is what the engine reports (``usage.prompt_tokens_details.cached_tokens``), else 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

from fspo.data.prompts import ZEROSHOT, parse_generation
from fspo.data.runs import ResolvedModel
from fspo.data.schema import PreferenceRecord
from fspo.errors import FspoError, loading
from fspo.llm.base import GenerationParams, apply_stops
from fspo.llm.openai_compat import Completion, OpenAIBackend
from fspo.serve.personalize import STOP_STRINGS, Personalized, PromptRenderer, Rendered


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    return max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)


class _Closing:
    """An iterator whose ``close`` also closes the engine's stream (a generator closed before its first
    ``next`` would not run its ``finally``): a client that leaves early frees the engine."""

    def __init__(self, events: Iterator, pieces) -> None:
        self._events = events
        self._pieces = pieces

    def __iter__(self) -> _Closing:
        return self

    def __next__(self):
        return next(self._events)

    def close(self) -> None:
        self._events.close()
        self._pieces.close()


class RemoteEngine(PromptRenderer):
    """Personalized generation through an OpenAI-compatible completions endpoint serving ``info``'s model."""

    def __init__(self, backend: OpenAIBackend, tokenizer, info: ResolvedModel) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.info = info

    @classmethod
    def connect(
        cls, endpoint: str, info: ResolvedModel, timeout: float = 120.0, max_retries: int = 2, option: str = "--engine"
    ) -> RemoteEngine:
        """A client of ``endpoint`` (``URL[#model]``; no model: the first one it serves) with ``info``'s
        tokenizer (the weights are not loaded). The engine is asked for its models now, so an engine
        that is down or refuses the key is a one-line error at start."""
        from fspo.llm.endpoints import parse_endpoint, served_models
        from fspo.models.registry import load_tokenizer

        ep = parse_endpoint(endpoint, option)
        backend = OpenAIBackend(ep.base_url, ep.model, timeout=timeout, max_retries=max_retries, option=option)
        if ep.model:
            served_models(backend.client, backend.base_url)  # reachable, and the key is accepted
        with loading(f"{info.spec}: cannot load the tokenizer"):
            tokenizer = load_tokenizer(info.spec)
        return cls(backend, tokenizer, info)

    @property
    def device(self) -> str:
        return f"engine {self.backend.endpoint}"

    def close(self) -> None:
        self.backend.close()

    # ---- generation ---------------------------------------------------------------------------
    @staticmethod
    def _result(rendered: Rendered, out: Completion, answer: str, raw: str, description, start: float) -> Personalized:
        prompt_tokens = out.prompt_tokens if out.prompt_tokens is not None else len(rendered.ids)
        tokens = (prompt_tokens, out.cached_tokens, out.completion_tokens or 0)
        return Personalized.of(rendered, raw, answer, description, tokens, start)

    def generate(
        self,
        user_id: str,
        shots: Sequence[PreferenceRecord],
        question: str,
        params: GenerationParams | None = None,
        use_cache: bool = True,
        layout: str | None = None,
    ) -> Personalized:
        """Answer ``question`` for ``user_id`` conditioned on ``shots`` (``use_cache``: the engine decides)."""
        params = params or GenerationParams()
        layout = layout or self.info.layout
        rendered = self.render(shots, question, params.max_new_tokens, layout)
        start = time.perf_counter()
        out = self.backend.complete(rendered.text, replace(params, stop=STOP_STRINGS))
        answer, description = parse_generation(out.text, layout)
        return self._result(rendered, out, answer, out.text, description, start)

    def stream(
        self,
        user_id: str,
        shots: Sequence[PreferenceRecord],
        question: str,
        params: GenerationParams | None = None,
        use_cache: bool = True,
        layout: str | None = None,
    ) -> Iterator[str | Personalized]:
        """:meth:`generate` streamed: answer deltas, then the :class:`Personalized` result. The prompt is
        rendered and the request sent now, so a refusal raises before any output."""
        params = params or GenerationParams()
        layout = layout or self.info.layout
        rendered = self.render(shots, question, params.max_new_tokens, layout)

        def settled(text: str) -> str:
            text = apply_stops(text, STOP_STRINGS)
            return parse_generation(text[: len(text) - _held_back(text, STOP_STRINGS)], layout)[0]

        def finish(out: Completion, start: float) -> Personalized:
            answer, description = parse_generation(out.text, layout)
            return self._result(rendered, out, answer, out.text, description, start)

        return self._stream(rendered, replace(params, stop=STOP_STRINGS), settled, finish)

    def complete(self, text: str, params: GenerationParams | None = None) -> Personalized:
        """Continue ``text`` as given, cut at ``params.stop`` (no user, no shots, no parsing)."""
        params = params or GenerationParams()
        rendered = self.render_raw(text, params.max_new_tokens)
        start = time.perf_counter()
        out = self.backend.complete(text, params)
        return self._result(rendered, out, out.text, out.text, None, start)

    def stream_complete(self, text: str, params: GenerationParams | None = None) -> Iterator[str | Personalized]:
        """:meth:`complete`, streamed (a possible stop string's start is held back)."""
        params = params or GenerationParams()
        rendered = self.render_raw(text, params.max_new_tokens)

        def settled(raw: str) -> str:
            raw = apply_stops(raw, params.stop)
            return raw[: len(raw) - _held_back(raw, params.stop)]

        def finish(out: Completion, start: float) -> Personalized:
            return self._result(rendered, out, out.text, out.text, None, start)

        return self._stream(rendered, params, settled, finish)

    def _stream(self, rendered: Rendered, params: GenerationParams, settled, finish) -> Iterator[str | Personalized]:
        start = time.perf_counter()
        pieces = self.backend.stream_complete(rendered.text, params)  # sent now: errors before any output

        def events() -> Iterator[str | Personalized]:
            text, sent, result = "", "", None
            try:
                for piece in pieces:
                    if isinstance(piece, Completion):
                        result = finish(piece, start)
                        break
                    text += piece
                    answer = settled(text)
                    # Only a growing answer is sent; the final delta below settles a revised tail.
                    if answer.startswith(sent) and len(answer) > len(sent):
                        yield answer[len(sent) :]
                        sent = answer
            finally:
                pieces.close()  # a reader that left closes the engine's stream (it stops generating)
            if result is None:  # pragma: no cover - the client always ends with a Completion
                raise FspoError(f"{self.backend.base_url}/completions: the stream ended without a result")
            if result.answer.startswith(sent) and len(result.answer) > len(sent):
                yield result.answer[len(sent) :]
            elif not result.answer.startswith(sent):  # keep the streamed text the truth
                result = replace(result, answer=sent)
            yield result

        return _Closing(events(), pieces)

    def baseline(self, question: str, params: GenerationParams | None = None) -> Personalized:
        """The same model without the user's context (the zero-shot layout): a study's baseline arm."""
        return self.generate("", [], question, params, use_cache=False, layout=ZEROSHOT.name)

    def invalidate(self, user_id: str) -> None:
        """Nothing to forget here: an engine's prefix cache is keyed by the prompt's tokens, so a user's
        changed preferences simply make a new prefix."""
