"""``fspo study`` under hostile input and broken setups: bounded memory, no participant stuck for good,
safe CSV export, one-line errors."""

from __future__ import annotations

import csv
import time
from contextlib import suppress
from dataclasses import dataclass
from types import SimpleNamespace

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from http_checks import MB, asgi_post, peak_rss_growth, post_chunked

from fspo.cli import main
from fspo.serve.live import serve_in_thread
from fspo.serve.study import app as study_app
from fspo.serve.study.analyze import neutralize, write_csv
from fspo.serve.study.app import create_app
from fspo.serve.study.config import parse_config
from fspo.serve.study.store import StudyStore


def study_config(pregenerated: bool = True, model: str | None = None, questions: list[str] | None = None) -> dict:
    questions = questions or [f"Compare question {i}?" for i in range(2)]
    compare = []
    for i, q in enumerate(questions):
        item = {"question": q}
        if pregenerated:
            item.update(personalized=f"P{i}", baseline=f"B{i}")
        compare.append(item)
    cfg = {
        "title": "Hardening study",
        "seed": 2,
        "labels_per_participant": 2,
        "label_pairs": [{"question": f"L{i}?", "answers": [f"short {i}", f"long answer {i}"]} for i in range(2)],
        "compare": compare,
        "max_new_tokens": 4,
    }
    if model:
        cfg["model"] = model
    return cfg


def make_store(tmp_path, cfg: dict, n: int = 2) -> tuple[StudyStore, list[str]]:
    store = StudyStore(tmp_path / "study.sqlite")
    store.set_config(parse_config(cfg))  # no model check: the tests below need broken setups
    return store, store.invite(n)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def label_all(client: TestClient, token: str) -> dict:
    while True:
        state = client.get("/api/state", headers=bearer(token)).json()
        if state["phase"] != "label":
            return state
        r = client.post(
            "/api/label", json={"position": state["item"]["position"], "choice": "left"}, headers=bearer(token)
        )
        assert r.status_code == 200, r.text


def wait_for(client: TestClient, token: str, phase: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get("/api/state", headers=bearer(token)).json()
        if state["phase"] == phase:
            return state
        time.sleep(0.05)
    raise AssertionError(f"never reached {phase}: {state}")


def one_line_error(capsys, argv: list[str], needle: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    return err


# ---- memory: the 64 KB limit holds on the stream, and the token comes before the body -----------------


@pytest.mark.parametrize(
    "who, path, status",
    [(None, "/api/label", 401), ("bad", "/api/label", 401), ("ok", "/api/label", 413), (None, "/join", 413)],
)
def test_chunked_200mb_body_keeps_memory_bounded(tmp_path, who, path, status) -> None:
    store, (token, _) = make_store(tmp_path, study_config())
    headers = {} if who is None else bearer(token if who == "ok" else "guess")
    with serve_in_thread(create_app(store)) as base:
        response, grown = peak_rss_growth(lambda: post_chunked(base + path, headers, 200 * MB))
        assert response.status_code == status, response.text
        assert grown < 50, f"peak RSS grew by {grown:.0f} MB"
        assert response.headers["content-security-policy"]  # the security headers still apply
        assert httpx.get(base + "/healthz").status_code == 200
    assert all(r["choice"] is None for r in store.label_rows())


def test_token_is_checked_before_the_body_is_read(tmp_path) -> None:
    store, _ = make_store(tmp_path, study_config())
    app = create_app(store)

    def status(headers: list) -> int:
        return asgi_post(app, "/api/label", headers)

    assert status([]) == 401
    assert status([(b"authorization", b"Bearer guess")]) == 401
    assert status([(b"cookie", b"fspo_study=guess")]) == 401


def test_cookie_and_bearer_still_work(tmp_path) -> None:
    store, (a, b) = make_store(tmp_path, study_config())
    client = TestClient(create_app(store))
    assert client.get("/api/state", headers=bearer(a)).json()["phase"] == "label"
    client.cookies.set("fspo_study", b)
    state = client.get("/api/state").json()
    r = client.post("/api/label", json={"position": state["item"]["position"], "choice": "right"})
    assert r.status_code == 200
    assert [r["participant_id"] for r in store.label_rows() if r["choice"]] == [2]
    r = client.post("/api/label", content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert r.status_code == 413


# ---- no participant stuck: the model is checked up front, failures are retried -----------------------------


@dataclass
class Out:
    answer: str
    shots_used: int = 0


class FlakyEngine:
    """Fails the first ``failures`` generations, then answers."""

    info = SimpleNamespace(max_length=1024)

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def render(self, shots, question, max_new_tokens, layout=None):
        return SimpleNamespace(ids=[0] * 10)

    def generate(self, user_id, shots, question, params):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("CUDA out of memory (simulated)")
        return Out(f"personalized for {question}", len(shots))

    def baseline(self, question, params):
        return Out(f"baseline for {question}")


def test_failed_generation_is_retried_not_permanent(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(study_app, "RETRY_SECONDS", (0.3,))
    store, (token, _) = make_store(tmp_path, study_config(pregenerated=False, model="tiny"))
    engine = FlakyEngine(failures=2)
    app = create_app(store, engine, engine)
    client = TestClient(app)
    label_all(client, token)
    delayed = wait_for(client, token, "generating")
    deadline = time.monotonic() + 30
    while not delayed.get("delayed") and time.monotonic() < deadline:
        delayed = client.get("/api/state", headers=bearer(token)).json()
    assert delayed == {**delayed, "phase": "generating", "delayed": True}
    assert store.get(1).status == "generating" and "out of memory" in store.get(1).error
    state = wait_for(client, token, "compare")
    app.state.generator.shutdown()
    assert engine.calls >= 3 and state["item"]["left"].endswith("?")
    assert store.get(1).error is None
    rows = [r for r in store.comparison_rows() if r["participant_id"] == 1]
    assert all(r["personalized"] and r["baseline"] and r["shots_used"] == 2 for r in rows)


def test_restart_retries_at_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(study_app, "RETRY_SECONDS", (3600,))
    store, (a, b) = make_store(tmp_path, study_config(pregenerated=False, model="tiny"))
    broken = FlakyEngine(failures=10**6)
    first = create_app(store, broken, broken)
    client = TestClient(first)
    label_all(client, a)
    label_all(client, b)
    deadline = time.monotonic() + 30
    while (store.get(1).error is None or store.get(2).error is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wait_for(client, a, "generating")["delayed"] is True  # backing off for an hour
    first.state.generator.shutdown()
    store.set_status(2, "error", "RuntimeError: old failure")  # how an older version parked b for good
    # A restart (a fresh app) retries both at once.
    second = create_app(store, FlakyEngine(0), FlakyEngine(0))
    assert second.state.generator.resume() == 2
    client2 = TestClient(second)
    wait_for(client2, a, "compare")
    wait_for(client2, b, "compare")
    second.state.generator.shutdown()


def test_generated_answers_are_never_replaced(tmp_path) -> None:
    store, _ = make_store(tmp_path, study_config(pregenerated=False, model="tiny"))
    store.set_answers(1, 0, "first", "base", 2)
    store.set_answers(1, 0, "second", "other", 1)
    row = store.comparisons(1)[0]
    assert (row["personalized"], row["baseline"], row["shots_used"]) == ("first", "base", 2)


def write_yaml(path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_init_checks_the_model_and_leaves_no_database(tmp_path, capsys) -> None:
    db = tmp_path / "s.sqlite"
    missing = write_yaml(tmp_path / "m.yaml", study_config(pregenerated=False, model=str(tmp_path / "no-model")))
    one_line_error(capsys, ["study", "init", "--config", missing, "--db", str(db)], "no-model")
    assert not db.exists()
    invalid = write_yaml(tmp_path / "i.yaml", {**study_config(), "labels_per_participant": 99})
    one_line_error(capsys, ["study", "init", "--config", invalid, "--db", str(db)], "labels_per_participant")
    assert not db.exists()
    (tmp_path / "bad.yaml").write_text("title: [unclosed\n")
    one_line_error(capsys, ["study", "init", "--config", str(tmp_path / "bad.yaml"), "--db", str(db)], "YAML")
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "i.yaml", "m.yaml"]


def test_init_refuses_a_question_too_long_for_the_model(tmp_path, capsys) -> None:
    long_q = "Please tell me " + "very " * 3000 + "much?"
    cfg = study_config(pregenerated=False, model="tiny", questions=["Short?", long_q])
    path = write_yaml(tmp_path / "long.yaml", cfg)
    db = tmp_path / "s.sqlite"
    one_line_error(capsys, ["study", "init", "--config", path, "--db", str(db)], "compare[1].question")
    assert not db.exists()


def test_long_questions_are_handled_not_fatal(tmp_path) -> None:
    """A study created before the check (or by an older version) with questions that do not leave room
    for max_new_tokens: the long one gets fewer new tokens, one that fills the context is skipped."""
    long_q = "Please tell me " + "very " * 320 + "much?"  # ~995 of the tiny model's 1024 tokens
    huge_q = "Please tell me " + "very " * 1000 + "much?"
    cfg = {**study_config(pregenerated=False, model="tiny", questions=["Short?", long_q, huge_q]), "max_new_tokens": 40}
    store, (token, other) = make_store(tmp_path, cfg)
    config = store.config()
    engine, baseline = study_app.load_engines(config)
    budgets = study_app.answer_budgets(config, engine, baseline)
    assert budgets[0] == 40 and 0 < budgets[1] < 40 and budgets[2] == 0
    warnings = study_app.check_fit(config, budgets, serving=True)
    assert [w.split(":")[0] for w in warnings] == ["compare[1].question", "compare[2].question"]
    assert f"get {budgets[1]} new tokens" in warnings[0] and "skipped" in warnings[1]
    app = create_app(store, engine, baseline)
    client = TestClient(app)
    label_all(client, token)
    wait_for(client, token, "compare")
    rows = store.comparisons(1)
    assert sorted(r["item"] for r in rows) == [0, 1] and all(r["personalized"] and r["baseline"] for r in rows)
    while (state := client.get("/api/state", headers=bearer(token)).json())["phase"] == "compare":
        r = client.post(
            "/api/compare", json={"position": state["item"]["position"], "choice": "tie"}, headers=bearer(token)
        )
        assert r.status_code == 200
    assert state["phase"] == "done" and store.get(1).status == "done"
    app.state.generator.shutdown()


def test_all_items_skipped_means_done(tmp_path) -> None:
    huge_q = "Please tell me " + "very " * 1000 + "much?"
    store, (token, _) = make_store(tmp_path, study_config(pregenerated=False, model="tiny", questions=[huge_q]))
    app = create_app(store, *study_app.load_engines(store.config()))
    client = TestClient(app)
    label_all(client, token)
    wait_for(client, token, "done")
    app.state.generator.shutdown()


def test_serve_checks_the_model(tmp_path, capsys) -> None:
    store, _ = make_store(tmp_path, study_config(pregenerated=False, model=str(tmp_path / "gone")))
    store.close()
    db = str(tmp_path / "study.sqlite")
    one_line_error(capsys, ["study", "serve", "--db", db, "--port", "0"], "gone")


def test_fixed_model_is_accepted_until_answers_are_generated(tmp_path, capsys) -> None:
    store, _ = make_store(tmp_path, study_config(pregenerated=False, model=str(tmp_path / "typo")))
    db = str(tmp_path / "study.sqlite")
    fixed = write_yaml(tmp_path / "fixed.yaml", study_config(pregenerated=False, model="tiny"))
    assert main(["study", "init", "--config", fixed, "--db", db, "--participants", "0"]) == 0
    assert "updated model" in capsys.readouterr().err
    assert store.config().model == "tiny"
    # Other fields stay fixed: participants were assigned from them.
    other = write_yaml(tmp_path / "other.yaml", {**study_config(pregenerated=False, model="tiny"), "seed": 9})
    one_line_error(capsys, ["study", "init", "--config", other, "--db", db], "seed")
    # Once a model wrote answers, the generation settings are fixed too.
    store.set_answers(1, 0, "generated", "generated", 2)
    longer = write_yaml(
        tmp_path / "longer.yaml", {**study_config(pregenerated=False, model="tiny"), "max_new_tokens": 8}
    )
    one_line_error(capsys, ["study", "init", "--config", longer, "--db", db], "already generated")


def test_generation_with_tiny_model_after_fix(tmp_path) -> None:
    """The real engine path: a fixed config is loaded by serve's check and answers are generated."""
    store, (token, _) = make_store(tmp_path, study_config(pregenerated=False, model="tiny"))
    engine, baseline = study_app.load_engines(store.config())
    app = create_app(store, engine, baseline)
    client = TestClient(app)
    label_all(client, token)
    wait_for(client, token, "compare")
    app.state.generator.shutdown()


# ---- export and analyze ------------------------------------------------------------------------------------

HOSTILE = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", " =1+1", "\n=1+1"]


def test_export_neutralizes_formulas(tmp_path, capsys) -> None:
    cfg = study_config(questions=[f"{h} question" for h in HOSTILE[:4]])
    for i, item in enumerate(cfg["compare"]):
        item["personalized"] = HOSTILE[(i + 4) % len(HOSTILE)]
        item["baseline"] = HOSTILE[i]
    cfg["label_pairs"][0]["question"] = "=cmd|' /C calc'!A0"
    store, tokens = make_store(tmp_path, cfg)
    client = TestClient(create_app(store))
    for token in tokens:
        label_all(client, token)
        while (state := client.get("/api/state", headers=bearer(token)).json())["phase"] == "compare":
            client.post(
                "/api/compare", json={"position": state["item"]["position"], "choice": "left"}, headers=bearer(token)
            )
    out, labels = tmp_path / "c.csv", tmp_path / "l.csv"
    db = str(tmp_path / "study.sqlite")
    assert main(["study", "export", "--db", db, "--out", str(out), "--labels-out", str(labels)]) == 0
    for path in (out, labels):
        cells = [cell for row in csv.reader(path.open(newline="")) for cell in row]
        dangerous = [c for c in cells if c and (c[0] in "=+-@\t\r" or c.lstrip(" \n")[:1] in list("=+-@"))]
        assert dangerous == [], dangerous
        assert any(c.startswith("'=") for c in cells)
    rows = list(csv.DictReader(out.open(newline="")))
    assert {r["personalized"] for r in rows} <= {neutralize(h.strip()) for h in HOSTILE}  # config text is stripped
    capsys.readouterr()
    assert main(["study", "analyze", "--csv", str(out), "--json"]) == 0
    assert '"n": 8' in capsys.readouterr().out  # 2 participants x 4 items


def test_write_csv_neutralizes_raw_model_output(tmp_path) -> None:
    """Generated answers are not stripped: a leading tab or carriage return must be caught too."""
    rows = [
        {"participant_id": 1, "winner": "tie", "personalized": h, "baseline": "fine -1", "answered_at": -1.5}
        for h in HOSTILE
    ]
    path = tmp_path / "raw.csv"
    write_csv(path, rows, ["participant_id", "winner", "personalized", "baseline", "answered_at"])
    back = list(csv.DictReader(path.open(newline="")))
    assert [r["personalized"] for r in back] == ["'" + h for h in HOSTILE]
    assert {r["baseline"] for r in back} == {"fine -1"} and {r["answered_at"] for r in back} == {
        "-1.5"
    }  # numbers stay numbers


def test_export_to_a_folder_is_a_one_line_error(tmp_path, capsys) -> None:
    store, _ = make_store(tmp_path, study_config())
    db = str(tmp_path / "study.sqlite")
    target = tmp_path / "outdir"
    target.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line_error(capsys, ["study", "export", "--db", db, "--out", str(target)], "is a folder")
    one_line_error(
        capsys,
        ["study", "export", "--db", db, "--out", str(tmp_path / "c.csv"), "--labels-out", str(target)],
        "is a folder",
    )
    one_line_error(capsys, ["study", "export", "--db", db, "--out", str(tmp_path / "x" / "y.csv") + "/"], "file name")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "c.csv") == before
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "empty"),
        (b"a,b\n1,2\n", "winner"),
        (b"participant_id,winner\n1,maybe\n", ":2: winner"),
        (b"participant_id,winner\n1\n", ":2: expected 2 fields"),
        (b"participant_id,winner\n1,tie,extra\n", ":2: expected 2 fields"),
        (b"participant_id,winner\n,tie\n", "participant_id"),
        (b"\xff\xfe\x00p\x00a\x00r", "UTF-8"),
        (b'participant_id,winner\n1,"tie\n', "winner"),
        (b"participant_id,winner\n1,t\x00ie\n", "winner"),
        (b"participant_id,winner\n1," + b"x" * 200_000 + b"\n", "CSV"),
    ],
)
def test_analyze_malformed_csv_is_a_one_line_error(tmp_path, capsys, content, needle) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    one_line_error(capsys, ["study", "analyze", "--csv", str(path)], needle)


def test_analyze_reads_a_bom_and_blank_winners(tmp_path, capsys) -> None:
    path = tmp_path / "ok.csv"
    path.write_bytes("\ufeffparticipant_id,winner\n1,personalized\n1,\n2,baseline\n".encode())
    assert main(["study", "analyze", "--csv", str(path), "--json"]) == 0
    assert '"n": 2' in capsys.readouterr().out


# ---- the command handlers --------------------------------------------------------------------------------


def test_study_serve_bad_options_are_one_line_errors(tmp_path, capsys) -> None:
    make_store(tmp_path, study_config())[0].close()
    db = str(tmp_path / "study.sqlite")
    one_line_error(capsys, ["study", "serve", "--db", db, "--port", "99999"], "--port")
    one_line_error(capsys, ["study", "serve", "--db", str(tmp_path), "--port", "0"], "is a folder")
    (tmp_path / "x.txt").write_text("not sqlite " * 100)
    one_line_error(capsys, ["study", "serve", "--db", str(tmp_path / "x.txt"), "--port", "0"], "SQLite")


def test_study_serve_command(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from fspo.serve.live import free_port

    store, (token, _) = make_store(tmp_path, study_config())
    store.close()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fspo.cli",
            "study",
            "serve",
            "--db",
            str(tmp_path / "study.sqlite"),
            "--port",
            str(port),
        ],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            with suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        assert httpx.get(base + "/api/state").status_code == 401
        state = httpx.get(base + "/api/state", headers=bearer(token)).json()
        assert state["phase"] == "label"
        r = httpx.post(
            base + "/api/label", json={"position": state["item"]["position"], "choice": "left"}, headers=bearer(token)
        )
        assert r.status_code == 200
        # a second server on the same study database is refused at once (one writer per study)
        second = subprocess.run(
            [sys.executable, "-m", "fspo.cli", "study", "serve", "--db", str(tmp_path / "study.sqlite"), "--port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2 and "another fspo process" in second.stderr and "Traceback" not in second.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        output = proc.stdout.read()
    assert code in (0, 130), output
    assert "Traceback" not in output
    assert sum(r["choice"] is not None for r in StudyStore(tmp_path / "study.sqlite").label_rows()) == 1
