"""``fspo study``: participant flow over HTTP, isolation, validation, generation, export and analysis."""

from __future__ import annotations

import csv
import json
import time

import pytest
import yaml
from fastapi.testclient import TestClient

from fspo.cli import main
from fspo.errors import DataError
from fspo.serve.study.app import create_app
from fspo.serve.study.config import load_config, parse_config
from fspo.serve.study.store import StudyStore

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'


def study_config(pregenerated: bool = True, model: str | None = None, k: int = 2, n_compare: int = 3) -> dict:
    cfg = {
        "title": "Test study",
        "intro": "Pick what you like.",
        "seed": 1,
        "labels_per_participant": k,
        "label_pairs": [
            {"question": f"Label question {i}?", "answers": [f"short {i}", f"long answer {i}"]} for i in range(3)
        ],
        "compare": [],
        "max_new_tokens": 12,
    }
    for i in range(n_compare):
        item = {"question": f"Compare question {i}?"}
        if pregenerated:
            item.update(personalized=f"PERSONALIZED {i} {XSS}", baseline=f"BASELINE {i}")
        cfg["compare"].append(item)
    if model:
        cfg["model"] = model
    return cfg


def make_store(tmp_path, **kwargs) -> tuple[StudyStore, list[str]]:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_config(**kwargs)))
    store = StudyStore(tmp_path / "study.sqlite")
    store.set_config(load_config(path))
    return store, store.invite(3)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def run_participant(client: TestClient, token: str, pick=lambda i: "left") -> list[dict]:
    """Answer everything; returns the states seen."""
    seen = []
    deadline = time.monotonic() + 120
    i = 0
    while time.monotonic() < deadline:
        state = client.get("/api/state", headers=bearer(token)).json()
        seen.append(state)
        if state["phase"] in ("done", "error"):
            return seen
        if state["phase"] == "generating":
            time.sleep(0.05)
            continue
        i += 1
        url = "/api/label" if state["phase"] == "label" else "/api/compare"
        choice = pick(i)
        if state["phase"] == "label" and choice == "tie":
            choice = "left"
        r = client.post(url, json={"position": state["item"]["position"], "choice": choice}, headers=bearer(token))
        assert r.status_code == 200, r.text
    raise AssertionError("participant did not finish")


def test_full_flow_records_blind_sides(tmp_path) -> None:
    store, tokens = make_store(tmp_path)
    client = TestClient(create_app(store))
    seen = run_participant(client, tokens[0])
    assert [s["phase"] for s in seen] == ["label", "label", "compare", "compare", "compare", "done"]
    compare_states = [s for s in seen if s["phase"] == "compare"]
    # The raw text (including markup) is delivered as data; the page renders it with textContent.
    assert any(XSS in (s["item"]["left"] + s["item"]["right"]) for s in compare_states)
    rows = store.comparison_rows()
    mine = [r for r in rows if r["choice"]]
    assert len(mine) == 3
    for r in mine:  # "left" picked every time: the winner follows the recorded side
        assert r["winner"] == ("personalized" if r["personalized_side"] == "left" else "baseline")
    labels = [r for r in store.label_rows() if r["choice"]]
    assert len(labels) == 2


def test_order_and_sides_are_randomized_and_recorded(tmp_path) -> None:
    store, _ = make_store(tmp_path, n_compare=6)
    store.invite(20)
    rows = store.comparison_rows()
    orders = {tuple(r["item"] for r in rows if r["participant_id"] == p) for p in {r["participant_id"] for r in rows}}
    sides = {r["personalized_side"] for r in rows}
    assert len(orders) > 1 and sides == {"left", "right"}
    # Deterministic from the study seed and participant id.
    again = StudyStore(tmp_path / "other.sqlite")
    again.set_config(store.config())
    again.invite(23)
    assert [(r["item"], r["personalized_side"]) for r in again.comparison_rows()] == [
        (r["item"], r["personalized_side"]) for r in rows
    ]


def test_participants_are_isolated(tmp_path) -> None:
    store, (a, b, _c) = make_store(tmp_path)
    client = TestClient(create_app(store))
    state_a = client.get("/api/state", headers=bearer(a)).json()
    # B answers B's own first item; that must not change A's state or answers.
    state_b = client.get("/api/state", headers=bearer(b)).json()
    client.post("/api/label", json={"position": state_b["item"]["position"], "choice": "right"}, headers=bearer(b))
    assert client.get("/api/state", headers=bearer(a)).json() == state_a
    rows = store.label_rows()
    assert [r["participant_id"] for r in rows if r["choice"]] == [2]
    # No route takes a participant id; unknown tokens and no token are rejected.
    assert client.get("/api/state").status_code == 401
    assert client.get("/api/state", headers=bearer("guess")).status_code == 401
    assert client.post("/api/label", json={"position": 0, "choice": "left"}, headers=bearer("guess")).status_code == 401
    assert client.get("/api/participants/1").status_code == 401  # the token is checked first
    assert client.get("/api/participants/1", headers=bearer(a)).status_code == 404
    # A cannot answer B's comparisons: it only ever addresses its own positions.
    run_participant(client, b)
    done_b = [r for r in store.comparison_rows() if r["participant_id"] == 2]
    assert all(r["choice"] for r in done_b)
    assert client.post("/api/compare", json={"position": 0, "choice": "left"}, headers=bearer(a)).status_code == 409
    assert all(r["choice"] is None for r in store.comparison_rows() if r["participant_id"] == 1)


def test_join_sets_cookie_and_rejects_bad_tokens(tmp_path) -> None:
    store, (a, *_rest) = make_store(tmp_path)
    client = TestClient(create_app(store))
    r = client.get(f"/join?token={a}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/state").json()["phase"] == "label"  # cookie now set on the client
    fresh = TestClient(create_app(store))
    assert fresh.get("/join?token=nope", follow_redirects=False).status_code == 403
    assert fresh.post("/join", data={"token": a}, follow_redirects=False).status_code == 303
    r = TestClient(create_app(store)).post("/join", data={})
    assert r.status_code == 422 and "token" in r.json()["error"]
    assert fresh.get("/join").status_code == 400


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"position": 0, "choice": "maybe"}, 422, "choice"),
        ({"position": -1, "choice": "left"}, 422, "position"),
        ({"choice": "left"}, 422, "position"),
        ({"position": 0, "choice": "left", "x": 1}, 422, "x"),
        ({"position": 99, "choice": "left"}, 404, "99"),
    ],
)
def test_bad_answers_are_4xx_with_a_message(tmp_path, body, status, needle) -> None:
    store, (a, *_rest) = make_store(tmp_path)
    client = TestClient(create_app(store))
    r = client.post("/api/label", json=body, headers=bearer(a))
    assert r.status_code == status and needle in r.json()["error"]


def test_non_json_and_duplicate_posts(tmp_path) -> None:
    store, (a, *_rest) = make_store(tmp_path)
    client = TestClient(create_app(store))
    r = client.post("/api/label", data={"position": "0", "choice": "left"}, headers=bearer(a))
    assert r.status_code == 415 and "JSON" in r.json()["error"]
    r = client.post("/api/label", content=b"{oops", headers={**bearer(a), "content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    pos = client.get("/api/state", headers=bearer(a)).json()["item"]["position"]
    assert client.post("/api/label", json={"position": pos, "choice": "left"}, headers=bearer(a)).status_code == 200
    r = client.post("/api/label", json={"position": pos, "choice": "right"}, headers=bearer(a))
    assert r.status_code == 409 and "already answered" in r.json()["error"]
    assert [r["choice"] for r in store.label_rows() if r["choice"]] == ["left"]
    r = client.post("/api/compare", json={"position": 0, "choice": "tie"}, headers=bearer(a))
    assert r.status_code == 409 and "not open" in r.json()["error"]
    r = client.post("/api/label", content=b"x" * 70_000, headers={**bearer(a), "content-type": "application/json"})
    assert r.status_code == 413


def test_security_headers(tmp_path) -> None:
    store, _ = make_store(tmp_path)
    client = TestClient(create_app(store))
    r = client.get("/")
    assert "script-src 'self'" in r.headers["content-security-policy"] and "unsafe-inline" not in r.text
    assert r.headers["x-content-type-options"] == "nosniff"
    assert 'name="viewport"' in r.text
    js = client.get("/static/app.js").text
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "textContent" in js


def test_generation_with_tiny_model(tmp_path) -> None:
    store, (a, *_rest) = make_store(tmp_path, pregenerated=False, model="tiny")
    app = create_app(store)
    client = TestClient(app)
    # Make the tiny model's config small: short generations.
    seen = run_participant(client, a, pick=lambda i: "right")
    app.state.generator.shutdown()
    assert seen[-1]["phase"] == "done", seen[-1]
    rows = [r for r in store.comparison_rows() if r["participant_id"] == 1]
    assert all(r["personalized"] is not None and r["baseline"] is not None for r in rows)
    assert all(r["shots_used"] == 2 for r in rows)


def test_config_errors_name_the_field(tmp_path) -> None:
    with pytest.raises(DataError, match=r"label_pairs\[0\].answers"):
        parse_config({**study_config(), "label_pairs": [{"question": "q", "answers": ["same", "same"]}]})
    with pytest.raises(DataError, match="labels_per_participant"):
        parse_config({**study_config(), "labels_per_participant": 9})
    with pytest.raises(DataError, match="model"):
        parse_config(study_config(pregenerated=False))
    with pytest.raises(DataError, match="colour"):
        parse_config({**study_config(), "colour": "red"})
    load_config("examples/study.yaml")


def test_cli_init_export_analyze(tmp_path, capsys) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(study_config()))
    db = tmp_path / "s.sqlite"
    assert (
        main(
            [
                "study",
                "init",
                "--config",
                str(cfg),
                "--db",
                str(db),
                "--participants",
                "4",
                "--base-url",
                "https://study.example",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].split("\t")[1].startswith("https://study.example/join?token=")
    tokens = [line.split("\t")[0] for line in lines]
    client = TestClient(create_app(StudyStore(db)))
    for i, token in enumerate(tokens):
        run_participant(client, token, pick=lambda j, i=i: "tie" if i == 3 else ("left" if j % 2 else "right"))
    out = tmp_path / "out.csv"
    assert main(["study", "export", "--db", str(db), "--out", str(out), "--labels-out", str(tmp_path / "l.csv")]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {r["winner"] for r in rows} <= {"personalized", "baseline", "tie"}
    capsys.readouterr()
    assert main(["study", "analyze", "--csv", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 12 and res["ties"] == 3 and res["wins"] + res["losses"] == 9
    assert 0 <= res["p_value"] <= 1 and len(res["participants"]) == 4
    assert main(["study", "analyze", "--db", str(db)]) == 0
    assert "exact binomial test" in capsys.readouterr().out
    # A different config for the same db is refused; missing dbs are errors, not empty studies.
    other = tmp_path / "o.yaml"
    other.write_text(yaml.safe_dump({**study_config(), "title": "Other"}))
    assert main(["study", "init", "--config", str(other), "--db", str(db)]) == 2
    assert main(["study", "export", "--db", str(tmp_path / "missing.sqlite"), "--out", str(out)]) == 2
    assert "different study config" in capsys.readouterr().err


def test_analysis_numbers() -> None:
    from fspo.serve.study.analyze import analyze, wilson

    rows = [{"participant_id": p, "winner": w} for p in range(10) for w in ["personalized"] * 7 + ["baseline"] * 3]
    r = analyze(rows + [{"participant_id": 0, "winner": "tie"}, {"participant_id": 0, "winner": ""}])
    assert (r.wins, r.losses, r.ties, r.n) == (70, 30, 1, 101)
    assert r.win_rate == pytest.approx(0.7) and r.p_value < 1e-4
    lo, hi = r.wilson_ci
    assert lo < 0.7 < hi and wilson(70, 100) == r.wilson_ci
    assert r.bootstrap_ci[0] == pytest.approx(0.7) and r.bootstrap_ci[1] == pytest.approx(0.7)  # identical people
    empty = analyze([])
    assert empty.win_rate is None and empty.p_value is None
