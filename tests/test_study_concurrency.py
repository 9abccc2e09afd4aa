"""50 simulated participants at once against a live server on loopback: no answer is lost or doubled."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import yaml

from fspo.serve.live import serve_in_thread
from fspo.serve.study.app import create_app
from fspo.serve.study.config import load_config
from fspo.serve.study.store import StudyStore

N = 50
K = 3
M = 4


def config() -> dict:
    return {
        "title": "Load test",
        "labels_per_participant": K,
        "label_pairs": [{"question": f"L{i}?", "answers": [f"a{i}", f"b{i}"]} for i in range(K + 1)],
        "compare": [{"question": f"C{i}?", "personalized": f"p{i}", "baseline": f"b{i}"} for i in range(M)],
    }


def participant(base: str, token: str) -> int:
    answered = 0
    with httpx.Client(base_url=base, timeout=30) as client:
        r = client.get(f"/join?token={token}", follow_redirects=False)
        assert r.status_code == 303
        client.cookies.set("fspo_study", token)
        while True:
            state = client.get("/api/state").json()
            if state["phase"] == "done":
                return answered
            assert state["phase"] in ("label", "compare"), state
            url = "/api/label" if state["phase"] == "label" else "/api/compare"
            choice = ["left", "right"][state["item"]["position"] % 2]
            r = client.post(url, json={"position": state["item"]["position"], "choice": choice})
            assert r.status_code == 200, r.text
            answered += 1


def test_fifty_concurrent_participants(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config()))
    store = StudyStore(tmp_path / "c.sqlite")
    store.set_config(load_config(path))
    tokens = store.invite(N)
    start = time.monotonic()
    with serve_in_thread(create_app(store)) as base, ThreadPoolExecutor(max_workers=N) as pool:
        counts = list(pool.map(lambda t: participant(base, t), tokens))
    elapsed = time.monotonic() - start
    assert counts == [K + M] * N
    labels = [r for r in store.label_rows() if r["choice"]]
    comps = [r for r in store.comparison_rows() if r["choice"]]
    assert len(labels) == N * K and len(comps) == N * M
    assert len({(r["participant_id"], r["position"]) for r in comps}) == N * M
    assert store.db.query("PRAGMA journal_mode")[0][0] == "wal"
    statuses = store.db.query("SELECT status, COUNT(*) FROM participants GROUP BY status")
    assert [tuple(r) for r in statuses] == [("done", N)]
    assert elapsed < 60, f"took {elapsed:.1f}s"
