"""``fspo serve`` under hostile input: bounded memory for huge bodies, no 500s, one-line CLI errors."""

from __future__ import annotations

import threading
from contextlib import suppress

import httpx
import pytest
from fastapi.testclient import TestClient
from http_checks import MB, asgi_post, peak_rss_growth, post_chunked

from fspo.data.runs import resolve_model
from fspo.serve.api import create_app
from fspo.serve.live import serve_in_thread
from fspo.serve.personalize import Engine
from fspo.serve.users import UserStore

ADMIN = "admin-secret"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(resolve_model("tiny"))


@pytest.fixture()
def store(tmp_path) -> UserStore:
    return UserStore(tmp_path / "serve.sqlite")


@pytest.fixture()
def client(engine, store) -> TestClient:
    return TestClient(create_app(engine, store, [ADMIN], model_name="tiny"))


def auth(key: str = ADMIN) -> dict:
    return {"Authorization": f"Bearer {key}"}


def pair(tag: str) -> dict:
    return {"prompt": f"Question {tag}?", "chosen": f"Answer liked {tag}", "rejected": f"Answer disliked {tag}"}


# ---- memory: the body limit holds on the stream, and auth comes before the body ----------------------


@pytest.mark.parametrize(
    "headers, status",
    [({}, 401), (auth("wrong-key"), 401), (auth(), 413)],
    ids=["no-key", "bad-key", "admin-key"],
)
def test_chunked_200mb_body_keeps_memory_bounded(engine, store, headers, status) -> None:
    app = create_app(engine, store, [ADMIN], model_name="tiny")
    with serve_in_thread(app) as base:
        url = f"{base}/v1/users/alice/preferences"
        response, grown = peak_rss_growth(lambda: post_chunked(url, headers, 200 * MB))
        assert response.status_code == status, response.text
        assert grown < 50, f"peak RSS grew by {grown:.0f} MB"
        # The server is still healthy and still answers on a new connection.
        assert httpx.get(f"{base}/v1/health").status_code == 200
    assert store.list("alice") == []


def test_small_chunked_body_still_works(engine, store) -> None:
    import json

    app = create_app(engine, store, [ADMIN], model_name="tiny")
    body = json.dumps({"preferences": [pair("chunk")]}).encode()
    with serve_in_thread(app) as base, httpx.Client() as http:
        r = http.post(
            f"{base}/v1/users/alice/preferences",
            content=iter([body[:10], body[10:]]),
            headers={**auth(), "content-type": "application/json"},
        )
    assert r.status_code == 201, r.text
    assert [p.prompt for p in store.list("alice")] == ["Question chunk?"]


def test_unauthenticated_body_is_never_read(engine, store) -> None:
    app = create_app(engine, store, [ADMIN], model_name="tiny")
    for path in ("/v1/users/alice/preferences", "/v1/chat/completions", "/v1/users/alice/generate", "/v1/nope"):
        assert asgi_post(app, path, []) == 401
        assert asgi_post(app, path, [(b"authorization", b"Bearer nope")]) == 401
        assert asgi_post(app, path, [(b"authorization", b"Basic YTpi")]) == 401


def test_body_over_limit_by_content_length_is_413(client) -> None:
    r = client.post("/v1/users/alice/preferences", content=b"x" * (MB + 10), headers=auth())
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]


# ---- no 500s: ranges are 422, unknown ids 404 ------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-6, 1e-5, 0.7])
def test_tiny_temperatures_do_not_crash(client, temperature) -> None:
    client.post("/v1/users/alice/preferences", json={"preferences": [pair("t")]}, headers=auth())
    body = {"question": "Hi?", "max_new_tokens": 3, "temperature": temperature, "top_p": 1e-300, "seed": 3}
    r = client.post("/v1/users/alice/generate", json=body, headers=auth())
    assert r.status_code == 200, r.text
    chat = {
        "messages": [{"role": "user", "content": "Hi?"}],
        "user": "alice",
        "max_tokens": 3,
        "temperature": temperature,
    }
    assert client.post("/v1/chat/completions", json=chat, headers=auth()).status_code == 200


def test_tiny_temperature_is_greedy(client) -> None:
    client.post("/v1/users/alice/preferences", json={"preferences": [pair("g")]}, headers=auth())
    answers = set()
    for temperature, seed in ((0.0, 0), (1e-300, 1), (1e-6, 2)):
        body = {"question": "Hi?", "max_new_tokens": 6, "temperature": temperature, "seed": seed}
        answers.add(client.post("/v1/users/alice/generate", json=body, headers=auth()).json()["answer"])
    assert len(answers) == 1


@pytest.mark.parametrize(
    "raw",
    [
        b'{"question": "q", "temperature": NaN}',
        b'{"question": "q", "temperature": Infinity}',
        b'{"question": "q", "temperature": -1e-300}',
        b'{"question": "q", "temperature": 1e400}',
        b'{"question": "q", "top_p": 0}',
        b'{"question": "q", "top_p": NaN}',
        b'{"question": "q", "seed": 99999999999999999999999999}',
        b'{"question": "q", "seed": -1}',
        b'{"question": "q", "max_new_tokens": 99999999999999999999999999}',
        b'{"question": null}',
    ],
)
def test_out_of_range_numbers_are_422(client, raw) -> None:
    r = client.post("/v1/users/alice/generate", content=raw, headers={**auth(), "content-type": "application/json"})
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": None}],
        [{"type": "text"}],
        [{"type": "text", "text": 5}],
        [{"text": "no type"}],
        [{"type": None, "text": "x"}],
    ],
)
def test_chat_text_part_must_be_a_string(client, content) -> None:
    chat = {"messages": [{"role": "user", "content": content}], "user": "alice", "max_tokens": 2}
    r = client.post("/v1/chat/completions", json=chat, headers=auth())
    assert r.status_code == 422 and "messages.0.content" in r.json()["error"]["message"], r.text


def test_chat_text_parts_are_joined(client) -> None:
    parts = [
        {"type": "text", "text": "Recommend"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "a book."},
    ]
    chat = {"messages": [{"role": "user", "content": parts}], "user": "alice", "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=chat, headers=auth()).status_code == 200
    body = {"question": "Recommend\na book.", "max_new_tokens": 2, "return_prompt": True}
    prompt = client.post("/v1/users/alice/generate", json=body, headers=auth()).json()["prompt"]
    assert "Recommend\na book." in prompt


@pytest.mark.parametrize(
    "path, raw",
    [
        (
            "/v1/chat/completions",
            b'{"user": "a", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
        ),
        (
            "/v1/chat/completions",
            b'{"user": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
        ),
        ("/v1/chat/completions", b'{"model": "\\ud800", "user": "a", "messages": [{"role": "user", "content": "hi"}]}'),
        (
            "/v1/chat/completions",
            b'{"model": "' + b"m" * 300 + b'", "user": "a", "messages": [{"role": "user", "content": "hi"}]}',
        ),
        ("/v1/users/a/generate", b'{"question": "\\ud800 hi", "max_new_tokens": 2}'),
        (
            "/v1/users/a/preferences",
            b'{"preferences": [{"prompt": "p", "chosen": "a", "rejected": "b", "\\ud800": 1}]}',
        ),
    ],
)
def test_lone_surrogates_are_422_not_500(client, path, raw) -> None:
    r = client.post(path, content=raw, headers={**auth(), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"]


@pytest.mark.parametrize("pref_id", ["0", "-1", str(2**63), str(2**64), "9" * 30, "9" * 5000])
def test_preference_id_out_of_range_is_404(client, pref_id) -> None:
    r = client.delete(f"/v1/users/alice/preferences/{pref_id}", headers=auth())
    assert r.status_code in (404, 422), r.text
    if len(pref_id) < 100:
        assert r.status_code == 404


@pytest.mark.parametrize("user", [".", "..", "...", "a" * 65, "", "a/b", "é"])
def test_bad_user_ids(client, user) -> None:
    from urllib.parse import quote

    path = quote(user, safe="").replace(".", "%2E")  # encoded, so no client normalizes "." away
    r = client.get(f"/v1/users/{path}/preferences", headers=auth())
    assert r.status_code in (404, 422), r.text
    chat = {"messages": [{"role": "user", "content": "hi"}], "user": user}
    assert client.post("/v1/chat/completions", json=chat, headers=auth()).status_code == 422


def test_dotted_ids_that_are_not_only_dots_work(client) -> None:
    r = client.post("/v1/users/a.b/preferences", json={"preferences": [pair("d")]}, headers=auth())
    assert r.status_code == 201


@pytest.mark.parametrize("key", ["é", "\u00ff" * 40, "a b", "x" * 5000])
def test_odd_keys_are_401(client, key) -> None:
    header = ("Bearer " + key).encode("latin-1")
    r = client.get("/v1/users/alice/preferences", headers={"authorization": header})
    assert r.status_code == 401, r.text
    r = client.post("/v1/users/alice/preferences", json={"preferences": [pair("k")]}, headers={"authorization": header})
    assert r.status_code == 401, r.text


def test_cap_holds_under_parallel_posts(engine, store) -> None:
    """40 parallel posts of 10 pairs each against a user at 900: exactly 10 succeed, the rest are 409."""
    store.add("alice", [(f"q{i}", "a", "b") for i in range(900)])
    app = create_app(engine, store, [ADMIN], model_name="tiny")
    barrier = threading.Barrier(40)
    statuses: list[int] = []

    def post(i: int, base: str) -> None:
        body = {"preferences": [pair(f"{i}-{j}") for j in range(10)]}
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            statuses.append(http.post(f"{base}/v1/users/alice/preferences", json=body, headers=auth()).status_code)

    with serve_in_thread(app) as base:
        threads = [threading.Thread(target=post, args=(i, base)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(statuses) == [201] * 10 + [409] * 30
    assert len(store.list("alice")) == 1000


def test_store_cap_is_checked_in_the_transaction(store) -> None:
    from fspo.serve.users import TooManyPreferences

    ids, count = store.add("bob", [("q", "a", "b")] * 3, cap=3)
    assert len(ids) == 3 and count == 3
    with pytest.raises(TooManyPreferences) as err:
        store.add("bob", [("q", "a", "b")], cap=3)
    assert err.value.have == 3 and len(store.list("bob")) == 3


# ---- the command handlers: one-line errors (exit 2), keys off the command line, a real server ----------


def one_line_error(capsys, argv: list[str], needle: str) -> None:
    from fspo.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_serve_bad_options_are_one_line_errors(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FSPO_API_KEY", ADMIN)
    base = ["serve", "--model", "tiny"]
    one_line_error(capsys, [*base, "--db", str(tmp_path)], "is a folder")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a database\n" * 100)
    one_line_error(capsys, [*base, "--db", str(text)], "not a usable SQLite database")
    assert text.read_text() == "this is not a database\n" * 100  # untouched
    db = str(tmp_path / "s.sqlite")
    one_line_error(capsys, [*base, "--db", db, "--port", "99999"], "--port")
    one_line_error(capsys, [*base, "--db", db, "--port", "-1"], "--port")
    one_line_error(capsys, [*base, "--db", db, "--host", "no.such.host.invalid"], "--host")
    one_line_error(capsys, [*base, "--db", db, "--cache-users", "-1"], "--cache_users")
    one_line_error(capsys, [*base, "--db", db, "--max-batch", "0"], "--max_batch")
    one_line_error(capsys, [*base, "--db", db, "--max-batch", "many"], "--max_batch")
    missing = str(tmp_path / "missing.key")
    one_line_error(capsys, [*base, "--db", db, "--port", "0", "--api-key-file", missing], "--api-key-file")
    (tmp_path / "empty.key").write_text("\n\n")
    one_line_error(capsys, [*base, "--db", db, "--port", "0", "--api-key-file", str(tmp_path / "empty.key")], "no key")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        one_line_error(capsys, [*base, "--db", db, "--port", port], "cannot listen")
    one_line_error(capsys, ["serve", "--model", str(tmp_path), "--db", db, "--port", "0"], "model")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    one_line_error(capsys, ["serve", "--model", str(broken), "--db", db, "--port", "0"], "model")


def test_personalize_bad_options_are_one_line_errors(tmp_path, capsys) -> None:
    import json

    prefs = tmp_path / "p.jsonl"
    prefs.write_text(json.dumps({"user_id": "u", "prompt": "Q?", "chosen": "yes", "rejected": "no"}) + "\n")
    base = ["personalize", "--model", "tiny", "--prefs", str(prefs), "Hi?"]
    one_line_error(capsys, [*base, "--max-new-tokens", "0"], "--max_new_tokens")
    one_line_error(capsys, [*base, "--max-new-tokens", "-5"], "--max_new_tokens")
    one_line_error(capsys, [*base, "--temperature", "nan"], "--temperature")
    one_line_error(capsys, [*base, "--temperature", "-1"], "--temperature")
    one_line_error(capsys, [*base, "--seed", "-1"], "--seed")


def test_personalize_tiny_temperature_is_greedy(tmp_path, capsys) -> None:
    import json

    from fspo.cli import main

    prefs = tmp_path / "p.jsonl"
    prefs.write_text(json.dumps({"user_id": "u", "prompt": "Q?", "chosen": "yes", "rejected": "no"}) + "\n")
    outs = []
    for temperature in ("0", "1e-300"):
        argv = ["personalize", "--model", "tiny", "--prefs", str(prefs), "--max-new-tokens", "4", "Hi?"]
        assert main([*argv, "--temperature", temperature]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_api_key_flag_warns_about_the_process_list(capsys) -> None:
    from fspo.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "process list" in help_text and "--api-key-file" in help_text and "FSPO_API_KEY" in help_text


def start_cli(argv: list[str], env: dict, tmp_path):
    """Start ``fspo ARGV`` in a subprocess; return it once /v1/health (or /healthz) answers, and its URL."""
    import os
    import subprocess
    import sys
    import time

    from fspo.serve.live import free_port

    port = free_port()
    log = open(tmp_path / f"server-{port}.log", "w+")  # noqa: SIM115 (closed by stop_cli)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fspo.cli", *argv, "--port", str(port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"server exited {proc.returncode}: {log.read()}")
        with suppress(httpx.HTTPError):
            if httpx.get(url + ("/healthz" if argv[0] == "study" else "/v1/health"), timeout=2).status_code == 200:
                return proc, url, log
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start")


def stop_cli(proc, log) -> str:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=30) in (0, 130)  # 130: the CLI reports the Ctrl-C
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        text = log.read()
        log.close()
    return text


def test_serve_command_with_key_from_environment(tmp_path) -> None:
    db = tmp_path / "cli.sqlite"
    argv = ["serve", "--model", "tiny", "--db", str(db), "--name", "tiny-cli"]
    proc, url, log = start_cli(argv, {"FSPO_API_KEY": "env-admin-key"}, tmp_path)
    try:
        assert httpx.get(url + "/v1/health").json()["model"] == "tiny-cli"
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers=auth("wrong")).status_code == 401
        r = httpx.post(
            f"{url}/v1/users/zoe/preferences", json={"preferences": [pair("z")]}, headers=auth("env-admin-key")
        )
        assert r.status_code == 201, r.text
    finally:
        output = stop_cli(proc, log)
    assert "env-admin-key" not in output and "admin key for this run" not in output
    assert len(UserStore(db).list("zoe")) == 1


def test_serve_command_with_key_file(tmp_path) -> None:
    keyfile = tmp_path / "admin.key"
    keyfile.write_text("file-key-1\n\nfile-key-2\n")
    argv = ["serve", "--model", "tiny", "--db", str(tmp_path / "k.sqlite"), "--api-key-file", str(keyfile)]
    proc, url, log = start_cli(argv, {"FSPO_API_KEY": ""}, tmp_path)
    try:
        for key in ("file-key-1", "file-key-2"):
            assert httpx.get(url + "/v1/models", headers=auth(key)).status_code == 200
    finally:
        stop_cli(proc, log)


def test_kill_9_loses_no_acknowledged_row(tmp_path) -> None:
    """Four clients post pairs while the server is SIGKILLed: every acknowledged id is on disk."""
    import signal
    import time

    db = tmp_path / "k9.sqlite"
    proc, url, log = start_cli(["serve", "--model", "tiny", "--db", str(db)], {"FSPO_API_KEY": ADMIN}, tmp_path)
    acked: list[int] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = http.post(
                        f"{url}/v1/users/u{n}/preferences", json={"preferences": [pair(f"{n}-{i}")]}, headers=auth()
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 201:
                    acked.extend(r.json()["ids"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(30)
    log.close()
    assert len(acked) > 20
    store = UserStore(db)
    stored = {p.id for n in range(4) for p in store.list(f"u{n}")}
    assert set(acked) <= stored
