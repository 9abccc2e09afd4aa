"""The OpenAI-compatible client (the ``openai`` SDK) against a real HTTP server on loopback: retries
(``Retry-After`` honoured), timeouts, typed errors as one line, the served model by default."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fspo.errors import FspoError
from fspo.llm.base import GenerationParams, prompt_text
from fspo.llm.openai_compat import OpenAIBackend
from fspo.llm.scripted import ScriptedBackend


class State:
    fail_first: dict[str, int] = {}
    retry_after: dict[str, str] = {}  # text -> Retry-After of its 429s
    times: dict[str, list[float]] = {}
    requests: list[dict] = []
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def send_json(self, status: int, out: dict, headers: dict | None = None) -> None:
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client gave up (timeout test)
            self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path.endswith("/models"):
            self.send_json(200, {"object": "list", "data": [{"id": "first-model", "object": "model"}]})
        else:
            self.send_json(404, {"error": {"message": "no such route"}})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") == "Bearer wrong":
            self.send_json(401, {"error": {"message": "invalid API key", "type": "authentication_error"}})
            return
        if body["model"] == "missing":
            self.send_json(404, {"error": {"message": "The model `missing` does not exist."}})
            return
        with State.lock:
            State.requests.append(body)
            State.in_flight += 1
            State.max_in_flight = max(State.max_in_flight, State.in_flight)
        try:
            text = body.get("prompt") or body["messages"][-1]["content"]
            if "SLOW" in text:
                time.sleep(1.0)
                return
            with State.lock:
                left = State.fail_first.get(text, 0)
                State.fail_first[text] = left - 1
                State.times.setdefault(text, []).append(time.monotonic())
            if left > 0 and text in State.retry_after:
                self.send_json(429, {"error": {"message": "slow down"}}, {"Retry-After": State.retry_after[text]})
                return
            if left > 0:  # a short retry-after-ms keeps the test fast (the SDK's own backoff starts at 0.5 s)
                self.send_response(500)
                self.send_header("retry-after-ms", "20")
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"boom")
                return
            time.sleep(0.05)
            if body["model"] == "scripted":  # a fake LLM behind real HTTP, for the whole pipeline
                content = ScriptedBackend().respond(prompt_text(body["messages"]))
                out = {"choices": [{"message": {"role": "assistant", "content": content}}]}
            elif self.path.endswith("/chat/completions"):
                out = {"choices": [{"message": {"role": "assistant", "content": f"chat:{text}"}}]}
            else:
                out = {"choices": [{"text": f"text:{text} STOP tail"}]}
            self.send_json(200, out | {"usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
        finally:
            with State.lock:
                State.in_flight -= 1


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_chat_and_completions(server):
    llm = OpenAIBackend(server, "m", concurrency=2)
    chat = llm.generate([[{"role": "user", "content": "hi"}]], GenerationParams())
    text = llm.generate(["raw"], GenerationParams(stop=(" STOP",)))
    assert chat == ["chat:hi"] and text == ["text:raw"]
    assert State.requests[-1]["model"] == "m" and State.requests[-1]["stop"] == [" STOP"]


def test_bounded_concurrency_and_order(server):
    State.max_in_flight = 0
    llm = OpenAIBackend(server, "m", concurrency=3)
    prompts = [[{"role": "user", "content": f"p{i}"}] for i in range(12)]
    assert llm.generate(prompts, GenerationParams()) == [f"chat:p{i}" for i in range(12)]
    assert 1 < State.max_in_flight <= 3


def test_retry_500_then_success(server):
    State.fail_first["flaky"] = 2
    llm = OpenAIBackend(server, "m", max_retries=3)
    assert llm.generate([[{"role": "user", "content": "flaky"}]], GenerationParams()) == ["chat:flaky"]


def test_retry_after_is_honoured(server):
    State.fail_first["busy"] = 1
    State.retry_after["busy"] = "1"
    llm = OpenAIBackend(server, "m", max_retries=2)
    assert llm.generate([[{"role": "user", "content": "busy"}]], GenerationParams()) == ["chat:busy"]
    first, second = State.times["busy"]
    assert second - first >= 0.9  # waited what the 429 asked, not the SDK's 0.5 s first backoff


def test_typed_errors_are_one_line(server):
    with pytest.raises(FspoError) as exc:
        OpenAIBackend(server, "m", api_key="wrong").generate(["x"], GenerationParams())
    assert str(exc.value).startswith(f"{server}/completions: HTTP 401: the server refused the API key")
    with pytest.raises(FspoError) as exc:
        OpenAIBackend(server, "missing").generate(["x"], GenerationParams())
    assert "HTTP 404" in str(exc.value) and f"{server}/models lists the served models" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_model_defaults_to_the_first_served_one(server):
    llm = OpenAIBackend.from_endpoint(server)
    assert llm.model == "first-model" and llm.name == "openai:first-model"
    assert OpenAIBackend.from_endpoint(server + "#named").model == "named"
    out = llm.complete("raw", GenerationParams(stop=(" STOP",)))
    assert out.text == "text:raw" and out.prompt_tokens == 3 and out.cached_tokens == 0


def test_persistent_500_is_one_line_error(server):
    State.fail_first["broken"] = 100
    llm = OpenAIBackend(server, "m", max_retries=1)
    with pytest.raises(FspoError, match="HTTP 500"):
        llm.generate([[{"role": "user", "content": "broken"}]], GenerationParams())


def test_timeout(server):
    llm = OpenAIBackend(server, "m", timeout=0.3, max_retries=1)
    with pytest.raises(FspoError, match="no answer within the timeout"):
        llm.generate([[{"role": "user", "content": "SLOW"}]], GenerationParams())


def test_unreachable_server_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=1)
    with pytest.raises(FspoError) as exc:
        llm.generate(["x"], GenerationParams())
    assert str(exc.value) == f"cannot reach http://127.0.0.1:{port}/v1: connection refused"


def test_cli_synth_against_loopback_server(server, tmp_path, capsys):
    """The whole pipeline through real HTTP (the server answers like the scripted backend)."""
    from fspo.cli import main
    from fspo.data.io import load_data

    rc = main(
        [
            "synth",
            "--domain",
            "roleplay",
            "--users",
            "3",
            "--questions",
            "3",
            "--backend",
            "openai",
            "--base-url",
            server,
            "--model",
            "scripted",
            "--out",
            str(tmp_path),
            "--no-embed",
            "--no-plots",
            "--quiet",
            "--concurrency",
            "4",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    data = load_data(tmp_path)
    assert data.prefs and all(r.meta["generator"] == "openai:scripted" for r in data.prefs)


def test_cli_unreachable_is_one_line(tmp_path, capsys):
    from fspo.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(
        [
            "synth",
            "--domain",
            "roleplay",
            "--users",
            "2",
            "--questions",
            "2",
            "--backend",
            "openai",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--model",
            "m",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"fspo synth: error: cannot reach http://127.0.0.1:{port}/v1: connection refused"]


def test_cli_synth_engine_spelling(server, tmp_path, capsys):
    """``--engine URL#model`` and ``--judge-engine`` are the new spellings of --backend openai --base-url --model."""
    from fspo.cli import main
    from fspo.data.io import load_data

    argv = ["synth", "--domain", "roleplay", "--users", "2", "--questions", "2", "--no-embed", "--no-plots", "--quiet"]
    rc = main([*argv, "--engine", f"{server}#scripted", "--judge-engine", f"{server}#scripted", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    data = load_data(tmp_path)
    assert data.prefs and all(r.meta["generator"] == "openai:scripted" for r in data.prefs)
    assert main([*argv, "--engine", f"{server}#a", "--models", "b", "--out", str(tmp_path / "x")]) == 2
    assert "--engine: names the model after '#'" in capsys.readouterr().err
