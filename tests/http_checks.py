"""Helpers the serve and study hardening tests share: peak memory of a request, a chunked body with
no Content-Length, and an ASGI POST whose body must never be read."""

from __future__ import annotations

import asyncio
import re
from contextlib import suppress

import httpx
import pytest

MB = 1 << 20


def peak_rss_growth(fn) -> tuple[object, float]:
    """Run ``fn`` and return its result and how far this process's peak RSS rose above the start, in MB."""

    def kb(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))

    try:
        with open("/proc/self/clear_refs", "w") as fh:  # reset the peak to the current RSS
            fh.write("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    start = kb("VmRSS")
    result = fn()
    return result, (kb("VmHWM") - start) / 1024


def chunked(total: int, chunk: int = MB):
    """A request body with no Content-Length (a generator is sent with Transfer-Encoding: chunked)."""
    block = b"x" * chunk
    for _ in range(total // chunk):
        yield block


def post_chunked(url: str, headers: dict, total: int) -> httpx.Response:
    with httpx.Client(timeout=60) as http:
        return http.post(url, content=chunked(total), headers={**headers, "content-type": "application/json"})


def asgi_post(app, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    """POST through the ASGI app with a body that must never be read; return the response status."""
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body was read before the credentials were checked")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    with suppress(AssertionError):
        asyncio.run(app(scope, receive, send))
    return sent[0]["status"] if sent else 0
