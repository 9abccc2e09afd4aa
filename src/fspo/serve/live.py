"""ASGI plumbing shared by ``fspo serve`` and ``fspo study serve``.

- :class:`BodyGuard` authenticates a request and bounds its body *before* the app reads it.
  Checking ``Content-Length`` alone lets a chunked upload through, and FastAPI reads a whole body
  before it runs the auth dependency; so the guard counts the bytes of the stream itself.
- :func:`listen` binds the port up front, so a bad ``--host``/``--port`` is a one-line error.
- :func:`serve_in_thread` runs an app on a free loopback port (tests, benches).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from starlette.responses import JSONResponse

from fspo.errors import FspoError

# (scope) -> None to let the request through, or an error message for a 401.
Authorize = Callable[[dict], Awaitable[str | None]]
# (status, message) -> an ASGI response in the app's error format.
ErrorResponse = Callable[[int, str], Callable]


class BodyGuard:
    """ASGI middleware: auth first, then the body read into memory up to ``limit`` bytes, else 413.

    The app sees the buffered body replayed as one message. A rejected request's unread body is
    left to the server, which discards it (uvicorn stops buffering once the response is sent).
    """

    def __init__(self, app, *, limit: int, error: ErrorResponse, authorize: Authorize | None = None) -> None:
        self.app = app
        self.limit = limit
        self.error = error
        self.authorize = authorize

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.authorize is not None:
            denied = await self.authorize(scope)
            if denied is not None:
                await self.error(401, denied)(scope, receive, send)
                return
        too_big = f"request body over {self.limit} bytes"
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self.error(413 if length.isdigit() else 400, too_big)(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self.error(413, too_big)(scope, receive, send)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ErrorJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error message can quote user input, and a lone surrogate
    from a JSON body (``"\\ud800"``) cannot be encoded as UTF-8 (a 500 while reporting a 422)."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def bearer_token(scope: dict) -> str | None:
    """The credential of ``Authorization: Bearer <token>`` (scheme case-insensitive), else None."""
    value = _header(scope, b"authorization") or ""
    scheme, _, token = value.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or a one-line error."""
    if not 0 <= port <= 65535:
        raise FspoError(f"--port must be from 0 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise FspoError(f"--host {host!r}: cannot resolve: {getattr(exc, 'strerror', None) or exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise FspoError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run_server(app, sock: socket.socket) -> None:
    """Serve ``app`` on a socket from :func:`listen` until interrupted (uvicorn, warnings only)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(app, timeout: float = 20.0) -> Iterator[str]:
    """Yield the base URL of ``app`` served on 127.0.0.1; stop the server on exit."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
