"""Any OpenAI-compatible server (vLLM, llama.cpp's ``llama-server``, TGI, a hosted API, another
``fspo serve``) through the ``openai`` SDK.

fspo stays a client: a bounded thread pool keeps at most ``concurrency`` requests in flight, every
request has a timeout, and the SDK retries connection errors, timeouts, 408/409/429 and 5xx with
exponential backoff, waiting what a ``Retry-After`` header asks (up to two minutes). The SDK's typed
errors become one line (:func:`api_error`): connection refused, a refused key, an unknown model, a
timeout. Chat prompts go to ``/v1/chat/completions``, raw text prompts to ``/v1/completions``.
Endpoints are written ``http://host:port/v1#model`` (:mod:`fspo.llm.endpoints`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fspo.errors import FspoError
from fspo.llm.base import GenerationParams, Prompt, apply_stops
from fspo.llm.endpoints import Endpoint, default_model, parse_endpoint

MAX_STOPS = 4  # OpenAI's limit on stop strings


@dataclass(frozen=True)
class Completion:
    """One answer with what the server reported about it (``None``: the server did not say)."""

    text: str
    prompt_tokens: int | None = None
    cached_tokens: int = 0  # usage.prompt_tokens_details.cached_tokens (0 when absent)
    completion_tokens: int | None = None
    finish_reason: str | None = None


def _usage(usage) -> tuple[int | None, int, int | None]:
    if usage is None:
        return None, 0, None
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return getattr(usage, "prompt_tokens", None), int(cached or 0), getattr(usage, "completion_tokens", None)


def _reason(exc: BaseException) -> str:
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(str(seen).lower())
        seen = seen.__cause__ or seen.__context__
    text = " ".join(chain)
    if "refused" in text:
        return "connection refused"
    if "name or service" in text or "nodename" in text or "resolve" in text or "name resolution" in text:
        return "unknown host"
    cause = exc.__cause__ or exc
    return (str(cause).splitlines() or [type(cause).__name__])[0][:200] or type(cause).__name__


def _server_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        msg = msg or body.get("detail") or body.get("message")
        if msg:
            return str(msg)
    response = getattr(exc, "response", None)
    try:
        text = response.text if response is not None else ""
    except Exception:  # a streamed response whose body was not read
        text = ""
    return text or getattr(exc, "message", "") or type(exc).__name__


def api_error(
    exc: BaseException,
    url: str,
    base_url: str | None = None,
    model: str | None = None,
    timeout: float | None = None,
    tries: int | None = None,
) -> FspoError:
    """An ``openai`` SDK error (or anything raised by a call) as one line naming ``url``."""
    import openai

    base_url = base_url or url
    if isinstance(exc, FspoError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        within = f" ({timeout:g} s)" if timeout else ""
        after = f" after {tries} tries" if tries else ""
        return FspoError(f"{url}: no answer within the timeout{within}{after}")
    if isinstance(exc, openai.APIConnectionError):
        return FspoError(f"cannot reach {base_url}: {_reason(exc)}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = " ".join(_server_message(exc).split())[:200]
        if status == 401:
            return FspoError(f"{url}: HTTP 401: the server refused the API key (set $OPENAI_API_KEY): {message}")
        if status == 404 and model:
            return FspoError(
                f"{url}: HTTP 404: {message} (is {model!r} served there? {base_url}/models lists the served models)"
            )
        return FspoError(f"{url}: HTTP {status}: {message}")
    if isinstance(exc, openai.APIError):  # e.g. an error event inside a stream
        message = " ".join(str(getattr(exc, "message", exc)).split())[:200]
        return FspoError(f"{url}: {message}")
    message = " ".join(str(exc).split())[:200]
    return FspoError(f"{url}: {type(exc).__name__}: {message}")


class CompletionStream:
    """The pieces of a streamed completion; ``close`` ends the HTTP stream, also before the first piece
    was read (closing a generator that never started would not)."""

    def __init__(self, pieces: Iterator, response) -> None:
        self._pieces = pieces
        self._response = response

    def __iter__(self) -> CompletionStream:
        return self

    def __next__(self):
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()
        self._response.close()


class OpenAIBackend:
    """Client of ``{base_url}/chat/completions`` and ``{base_url}/completions``.

    ``base_url`` includes the API prefix, e.g. ``http://127.0.0.1:8080/v1``; ``model`` None asks the
    server (the first model of ``/v1/models``). The key: ``api_key``, else ``$OPENAI_API_KEY``, else
    a placeholder (local engines started without a key accept any).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        name: str | None = None,
        option: str = "--engine",
    ) -> None:
        import openai

        self.base_url = base_url.rstrip("/")
        self.batch_size = concurrency
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.max_retries = max_retries
        key = api_key or os.environ.get("OPENAI_API_KEY", "") or "EMPTY"
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=key,
            max_retries=max_retries,
            timeout=openai.Timeout(timeout, connect=min(timeout, 10.0)),
        )
        self.model = model or default_model(self.client, Endpoint(self.base_url), option)
        self.name = name or f"openai:{self.model}"

    @classmethod
    def from_endpoint(cls, endpoint: str | Endpoint, option: str = "--engine", **kwargs) -> OpenAIBackend:
        """A backend for ``http://host:port/v1[#model]`` (parsed by :func:`parse_endpoint`)."""
        ep = endpoint if isinstance(endpoint, Endpoint) else parse_endpoint(endpoint, option)
        return cls(ep.base_url, ep.model, option=option, **kwargs)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.base_url, self.model)

    def _args(self, params: GenerationParams, index: int) -> dict:
        args: dict = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed + index,
        }
        if params.stop:
            args["stop"] = list(params.stop)[:MAX_STOPS]
        return args

    def _error(self, exc: BaseException, path: str) -> FspoError:
        return api_error(exc, self.base_url + path, self.base_url, self.model, self.timeout, self.max_retries + 1)

    def complete(self, prompt: Prompt, params: GenerationParams, index: int = 0) -> Completion:
        """One answer (cut at ``params.stop``) and its usage; raw text to completions, a chat to chat."""
        args = self._args(params, index)
        path = "/completions" if isinstance(prompt, str) else "/chat/completions"
        try:
            if isinstance(prompt, str):
                out = self.client.completions.create(prompt=prompt, **args)
                text = out.choices[0].text
            else:
                out = self.client.chat.completions.create(messages=list(prompt), **args)
                text = out.choices[0].message.content
            finish = out.choices[0].finish_reason
        except (IndexError, AttributeError, TypeError):
            raise FspoError(f"{self.base_url}{path}: unexpected response shape") from None
        except Exception as exc:
            raise self._error(exc, path) from None
        return Completion(apply_stops(text or "", params.stop), *_usage(out.usage), finish_reason=finish)

    def stream_complete(self, prompt: str, params: GenerationParams) -> CompletionStream:
        """A raw completion of ``prompt`` streamed: text pieces as they arrive, then the
        :class:`Completion` (its ``text`` is the pieces joined). The request is sent now, so a
        refused request raises here, before the first piece; closing the iterator closes the stream."""
        try:
            stream = self.client.completions.create(
                prompt=prompt, stream=True, stream_options={"include_usage": True}, **self._args(params, 0)
            )
        except Exception as exc:
            raise self._error(exc, "/completions") from None
        return CompletionStream(self._pieces(stream, params), stream)

    def _pieces(self, stream, params: GenerationParams) -> Iterator[str | Completion]:
        text, usage, finish = "", None, None
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices or []:
                    if choice.text:
                        text += choice.text
                        yield choice.text
                    finish = choice.finish_reason or finish
        except Exception as exc:
            raise self._error(exc, "/completions") from None
        finally:
            stream.close()
        yield Completion(apply_stops(text, params.stop), *_usage(usage), finish_reason=finish)

    def _one(self, job: tuple[int, Prompt, GenerationParams]) -> str:
        index, prompt, params = job
        return self.complete(prompt, params, index).text

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[str]:
        jobs = [(i, p, params) for i, p in enumerate(prompts)]
        if len(jobs) <= 1:
            return [self._one(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, jobs))

    def close(self) -> None:
        self.client.close()
