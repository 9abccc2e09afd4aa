"""Any OpenAI-compatible server: vLLM, llama.cpp's ``llama-server``, or a hosted API.

fspo stays a client: a bounded thread pool keeps at most ``concurrency`` requests in flight,
every request has a timeout, and 429/5xx/connection errors are retried with exponential
backoff. A server that cannot be reached at all is one line of error, not a traceback.
Chat prompts go to ``/v1/chat/completions``, raw text prompts to ``/v1/completions``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from fspo.errors import FspoError
from fspo.llm.base import GenerationParams, Prompt, apply_stops

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIBackend:
    """Client for ``{base_url}/chat/completions`` and ``{base_url}/completions``.

    ``base_url`` includes the API prefix, e.g. ``http://127.0.0.1:8080/v1``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or f"openai:{model}"
        self.batch_size = concurrency
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff = backoff
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers=headers,
            limits=httpx.Limits(max_connections=self.concurrency),
        )

    def _payload(self, prompt: Prompt, params: GenerationParams, index: int) -> tuple[str, dict]:
        body: dict = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed + index,
        }
        if params.stop:
            body["stop"] = list(params.stop)[:4]
        if isinstance(prompt, str):
            body["prompt"] = prompt
            return "/completions", body
        body["messages"] = list(prompt)
        return "/chat/completions", body

    def _post(self, path: str, body: dict) -> dict:
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                resp = self.client.post(url, json=body)
            except httpx.ConnectError as exc:
                if last:
                    raise FspoError(f"cannot reach {self.base_url}: {_reason(exc)}") from None
            except httpx.TimeoutException:
                if last:
                    raise FspoError(f"{url}: no answer within the timeout after {attempt + 1} tries") from None
            except httpx.HTTPError as exc:
                if last:
                    raise FspoError(f"{url}: {exc}") from None
            else:
                if resp.status_code < 300:
                    try:
                        return resp.json()
                    except ValueError:
                        raise FspoError(f"{url}: the server answered with invalid JSON") from None
                if resp.status_code not in RETRY_STATUS or last:
                    raise FspoError(f"{url}: HTTP {resp.status_code}: {resp.text.strip()[:200]}")
            time.sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _one(self, args: tuple[int, Prompt, GenerationParams]) -> str:
        index, prompt, params = args
        path, body = self._payload(prompt, params, index)
        data = self._post(path, body)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if path == "/chat/completions" else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise FspoError(f"{self.base_url}{path}: unexpected response shape: {str(data)[:200]}") from None
        return apply_stops(text or "", params.stop)

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[str]:
        jobs = [(i, p, params) for i, p in enumerate(prompts)]
        if len(jobs) <= 1:
            return [self._one(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, jobs))

    def close(self) -> None:
        self.client.close()


def _reason(exc: Exception) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service" in text or "nodename" in text or "resolve" in text:
        return "unknown host"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
