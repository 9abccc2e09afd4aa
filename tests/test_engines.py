"""Inference engines: the one endpoint syntax, ``fspo eval --engine / --method-engines`` and ``fspo serve
--engine`` against a LIVE ``fspo serve`` on the tiny model (an OpenAI-compatible engine like vLLM)."""

from __future__ import annotations

import json
import os
import socket

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fspo.cli import main
from fspo.data.runs import resolve_model
from fspo.errors import FspoError
from fspo.llm.endpoints import Endpoint, parse_endpoint
from fspo.serve.api import create_app
from fspo.serve.live import serve_in_thread
from fspo.serve.personalize import Engine
from fspo.serve.users import UserStore

openai = pytest.importorskip("openai")

ENGINE_KEY = "engine-admin"  # the engine's (back server's) admin key: what $OPENAI_API_KEY holds
FRONT_KEY = "front-admin"
ASK = [{"role": "user", "content": "Recommend a film for tonight."}]


# --- the syntax ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ("http://127.0.0.1:8000/v1#fspo", Endpoint("http://127.0.0.1:8000/v1", "fspo")),
        ("http://127.0.0.1:8000/v1", Endpoint("http://127.0.0.1:8000/v1", None)),
        ("http://127.0.0.1:8000", Endpoint("http://127.0.0.1:8000/v1", None)),  # no path: /v1
        ("HTTPS://api.example.com/v1/#meta-llama/Llama-3.2-3B", Endpoint("https://api.example.com/v1", "meta-llama/Llama-3.2-3B")),
        (" http://[::1]:8080/v1#m ", Endpoint("http://[::1]:8080/v1", "m")),
    ],
)  # fmt: skip
def test_parse_endpoint(text, want):
    assert parse_endpoint(text) == want
    assert parse_endpoint(str(want)) == want  # round trip


@pytest.mark.parametrize(
    "text, why",
    [
        ("127.0.0.1:8000/v1", "must start with http"),
        ("ftp://host/v1", "must start with http"),
        ("http://host:99999/v1", "not a valid URL"),
        ("http://host:port/v1", "not a valid URL"),
        ("http://[::1/v1", "not a valid URL"),
        ("http:///v1", "no host"),
        ("http://host/v1#", "nothing after '#'"),
        ("http://user:secret@host/v1", "credentials in the URL"),
        ("http://host/v1?x=1", "a query string"),
        ("http://host/v1#a b", "spaces or control"),
        ("http://host/v1\n#m", "spaces or control"),
        ("", "empty"),
    ],
)
def test_bad_endpoint_is_one_line_naming_the_option(text, why):
    with pytest.raises(FspoError) as exc:
        parse_endpoint(text, "--judge_engine")
    msg = str(exc.value)
    assert msg.startswith("--judge_engine: ") and why in msg and "\n" not in msg


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"https?://[^#]{0,30}(#.{0,10})?", fullmatch=True))
def test_hostile_strings_parse_or_fail_in_one_line(text):
    try:
        ep = parse_endpoint(text, "--engine")
    except FspoError as exc:
        msg = str(exc)
        assert msg.startswith("--engine: ") and "\n" not in msg and "\r" not in msg and len(msg) < 400
    else:
        assert ep.base_url.startswith(("http://", "https://")) and ep.model != ""
        assert parse_endpoint(str(ep)) == ep


def test_config_options_refuse_bad_endpoints_in_one_line(tmp_path, capsys):
    for argv, flag in (
        (["eval", "--engine", "localhost:8000", "--out", str(tmp_path / "e")], "--engine"),
        (["eval", "--method-engines", "fewshot=nope", "--out", str(tmp_path / "e")], "--method_engines"),
        (["synth", "--engine", "http://h/v1#", "--out", str(tmp_path / "s")], "--engine"),
        (["synth", "--judge-engine", "x", "--out", str(tmp_path / "s")], "--judge_engine"),
        (["serve", "--model", "tiny", "--engine", "http://h:0/v1", "--db", str(tmp_path / "db")], "--engine"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err
    assert main(["eval", "--method-engines", "oracle=http://h/v1", "--out", str(tmp_path / "e")]) == 2
    assert "not among the methods" in capsys.readouterr().err


def test_serve_with_an_unreachable_engine_is_one_line(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["serve", "--model", "tiny", "--engine", f"http://127.0.0.1:{port}/v1#tiny", "--api-key", "k"]
    assert main([*argv, "--db", str(tmp_path / "db.sqlite"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fspo serve: error: cannot reach http://127.0.0.1:{port}/v1: connection refused"]


# --- a live engine: fspo serve on the tiny model ----------------------------------------------------


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory):
    """A live ``fspo serve`` (tiny) as the engine; ``$OPENAI_API_KEY`` holds its admin key."""
    engine = Engine.load(resolve_model("tiny"), device="cpu")
    app = create_app(engine, UserStore(tmp_path_factory.mktemp("engine") / "e.sqlite"), [ENGINE_KEY], "tiny")
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = ENGINE_KEY
    try:
        with serve_in_thread(app) as base:
            yield base, engine
    finally:
        if old is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old
        if hasattr(engine, "close"):
            engine.close()


EVAL = [
    "eval", "--data", "examples/reviews", "--methods", "base,fewshot,fspo-ipo",
    "--model", "tiny", "--base-model", "tiny", "--users", "2", "--queries", "2", "--shots", "2",
    "--max-new-tokens", "12", "--max-length", "256", "--batch-size", "1", "--n-boot", "50",
    "--reward-accuracy", "false", "--quiet",
]  # fmt: skip


def _generations(out) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_eval_generates_through_a_live_engine(engine_url, tmp_path):
    """``--engine`` (rows that run --model) and ``--method-engines`` (one row) send the rendered prompts
    to the engine's /v1/completions; the answers equal the local ones (greedy, same weights)."""
    base, _ = engine_url
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main([*EVAL, "--out", str(local)]) == 0
    argv = [*EVAL, "--engine", f"{base}/v1#tiny", "--method-engines", f"fewshot={base}/v1", "--out", str(remote)]
    assert main(argv) == 0
    res = json.loads((remote / "eval.json").read_text())
    assert res["methods"]["fspo-ipo"]["engine"] == f"{base}/v1#tiny"
    assert res["methods"]["fewshot"]["engine"] == f"{base}/v1"
    assert "engine" not in res["methods"]["base"]
    assert any("fspo-ipo: answers generated through" in n for n in res["notes"])
    want, got = _generations(local), _generations(remote)
    assert len(got) == len(want) == 12 and any(g["answer"] for g in got)
    assert [(g["method"], g["raw"], g["answer"]) for g in got] == [(g["method"], g["raw"], g["answer"]) for g in want]
    # fewshot and fspo-ipo send the same prompts to the same engine and model: sent once, then replayed
    assert res["methods"]["fewshot"]["generation"]["generated"] == 4
    assert res["methods"]["fspo-ipo"]["generation"]["cache_hits"] == 4
    # a rerun replays every engine answer from the cache: nothing is sent
    assert main(argv) == 0
    again = json.loads((remote / "eval.json").read_text())
    assert all(m["generation"]["generated"] == 0 for m in again["methods"].values())


def test_eval_judge_model_uses_the_same_parser(tmp_path, capsys):
    argv = [*EVAL, "--judge", "llm", "--judge-model", "http://127.0.0.1:1/v1#", "--out", str(tmp_path / "e")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--judge_model: nothing after '#'" in err[0]


def _pairs(tag: str) -> dict:
    return {
        "preferences": [
            {"prompt": f"Review film {tag}{i}.", "chosen": f"A bright happy film {tag}{i}.", "rejected": f"Dull {i}."}
            for i in range(4)
        ]
    }


FRONT_ENGINE: dict = {}


@pytest.fixture(scope="module")
def front(engine_url, tmp_path_factory):
    """``fspo serve --engine`` (a RemoteEngine) in front of the live engine; alice has the same pairs on both."""
    from fspo.serve.remote import RemoteEngine

    base, _ = engine_url
    remote = RemoteEngine.connect(f"{base}/v1#tiny", resolve_model("tiny").for_serving())
    FRONT_ENGINE["remote"] = remote
    app = create_app(remote, UserStore(tmp_path_factory.mktemp("front") / "f.sqlite"), [FRONT_KEY], "fspo")
    with serve_in_thread(app) as url:
        for server, key in ((base, ENGINE_KEY), (url, FRONT_KEY)):
            r = httpx.post(f"{server}/v1/users/alice/preferences", json=_pairs("a"), headers=auth(key))
            assert r.status_code == 201
        yield url


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.slow
def test_serve_engine_answers_like_the_engine_itself(engine_url, front):
    """A personalized request through the front server returns the same text as the engine answering it
    in-process (temperature 0), plain and streamed, through the openai client."""
    base, _ = engine_url
    direct = openai.OpenAI(base_url=base + "/v1", api_key=ENGINE_KEY, max_retries=0)
    fronted = openai.OpenAI(base_url=front + "/v1", api_key=FRONT_KEY, max_retries=0)
    kwargs = dict(model="fspo", messages=ASK, user="alice", max_tokens=24, temperature=0)
    want = direct.chat.completions.create(**kwargs)
    got = fronted.chat.completions.create(**kwargs)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].message.content  # the tiny model says something
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    assert got.usage.completion_tokens == want.usage.completion_tokens
    assert got.usage.prompt_tokens_details.cached_tokens == 0  # what the engine reported (raw: no prefix cache)
    assert got.model_extra["fspo"]["shots_used"] == want.model_extra["fspo"]["shots_used"] == 4

    chunks = list(fronted.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 2 and "".join(texts) == want.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens

    # n=2 greedy choices, streamed together: both are the answer
    parts = {0: "", 1: ""}
    for chunk in fronted.chat.completions.create(stream=True, n=2, **kwargs):
        for c in chunk.choices:
            parts[c.index] += c.delta.content or ""
    assert parts == {0: want.choices[0].message.content, 1: want.choices[0].message.content}

    # a stream closed before its first piece is read frees the engine's connection
    remote = FRONT_ENGINE["remote"]
    opened = remote.stream("alice", [], "Hi?", None)
    opened.close()
    assert opened._pieces._response.response.is_closed

    # the legacy completions route, personalized and streamed
    plain = fronted.completions.create(model="fspo", prompt=ASK[0]["content"], user="alice", max_tokens=24)
    assert plain.choices[0].text == want.choices[0].message.content
    streamed = fronted.completions.create(
        model="fspo", prompt=ASK[0]["content"], user="alice", max_tokens=24, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == want.choices[0].message.content

    # the fspo generate route shows the prompt assembled in front: the same text the engine renders
    body = {"question": ASK[0]["content"], "max_new_tokens": 24, "return_prompt": True}
    a = httpx.post(f"{front}/v1/users/alice/generate", json=body, headers=auth(FRONT_KEY)).json()
    b = httpx.post(f"{base}/v1/users/alice/generate", json=body, headers=auth(ENGINE_KEY)).json()
    assert a["prompt"] == b["prompt"] and a["answer"] == b["answer"] == want.choices[0].message.content


@pytest.mark.slow
def test_serve_engine_raw_completions_auth_and_errors(engine_url, front):
    base, _ = engine_url
    fronted = openai.OpenAI(base_url=front + "/v1", api_key=FRONT_KEY, max_retries=0)
    direct = openai.OpenAI(base_url=base + "/v1", api_key=ENGINE_KEY, max_retries=0)
    kwargs = dict(model="fspo", prompt="Once upon a time", max_tokens=8, temperature=0)
    want = direct.completions.create(**kwargs).choices[0].text
    assert fronted.completions.create(**kwargs).choices[0].text == want
    assert "".join(c.choices[0].text for c in fronted.completions.create(stream=True, **kwargs)) == want
    with pytest.raises(openai.AuthenticationError):  # the front's own keys, not the engine's
        openai.OpenAI(base_url=front + "/v1", api_key=ENGINE_KEY, max_retries=0).chat.completions.create(
            model="fspo", messages=ASK, user="alice"
        )
    with pytest.raises(openai.BadRequestError, match="max_length"):  # checked in front, before the engine
        fronted.completions.create(model="fspo", prompt="word " * 2000, max_tokens=4)


@pytest.mark.slow
def test_fspo_serve_engine_command_against_a_live_engine(engine_url, tmp_path):
    """The CLI: ``fspo serve --model tiny --engine URL`` (no #model: the engine's first) in a subprocess,
    key for the engine from $OPENAI_API_KEY; a personalized chat equals the engine's own answer."""
    from test_serve_hardening import start_cli, stop_cli

    base, _ = engine_url
    argv = ["serve", "--model", "tiny", "--engine", f"{base}/v1", "--db", str(tmp_path / "f.sqlite")]
    proc, url, log = start_cli(argv, {"OPENAI_API_KEY": ENGINE_KEY, "FSPO_API_KEY": FRONT_KEY}, tmp_path)
    try:
        for server, key in ((base, ENGINE_KEY), (url, FRONT_KEY)):
            r = httpx.post(f"{server}/v1/users/carol/preferences", json=_pairs("c"), headers=auth(key))
            assert r.status_code == 201
        kwargs = dict(model="fspo", messages=ASK, user="carol", max_tokens=16)
        want = openai.OpenAI(base_url=base + "/v1", api_key=ENGINE_KEY).chat.completions.create(**kwargs)
        fronted = openai.OpenAI(base_url=url + "/v1", api_key=FRONT_KEY, max_retries=0)
        assert fronted.chat.completions.create(**kwargs).choices[0].message.content == want.choices[0].message.content
        pieces = fronted.chat.completions.create(stream=True, **kwargs)
        assert "".join(c.choices[0].delta.content or "" for c in pieces) == want.choices[0].message.content
    finally:
        text = stop_cli(proc, log)
    assert f"engine {base}/v1#tiny" in text  # the start line names the engine and its served model
