import json

import pytest

from fspo.demo import format_table, run_demo


def test_demo_on_tiny_model_writes_everything_under_out(tmp_path, monkeypatch):
    monkeypatch.delenv("FSPO_CACHE", raising=False)
    out = tmp_path / "demo"
    summary = run_demo(out, fast=True, model="tiny", progress=False)
    assert {r["method"] for r in summary["table"]} == {"base", "fewshot", "fspo-ipo"}
    for rel in ("report.md", "demo.json", "data/prefs.jsonl", "run/final/config.json", "eval/eval.json"):
        assert (out / rel).exists(), rel
    assert "win rate vs base" in (out / "report.md").read_text()
    first = json.loads((out / "eval" / "eval.json").read_text())
    again = run_demo(out, fast=True, model="tiny", progress=False)  # every stage is reused
    assert again["timings"]["train_s"] < summary["timings"]["train_s"]
    assert json.loads((out / "eval" / "eval.json").read_text())["win_rate"] == first["win_rate"]


def test_format_table():
    rows = [
        {
            "method": "base",
            "n": 4,
            "win_rate": None,
            "ci": None,
            "wins_ties_losses": None,
            "reward_accuracy": 0.5,
            "reward_metric": "loglik",
            "attribute_match": 0.25,
        },
        {
            "method": "fspo-ipo",
            "n": 4,
            "win_rate": 0.75,
            "ci": [0.5, 1.0],
            "wins_ties_losses": [3, 0, 1],
            "reward_accuracy": 1.0,
            "reward_metric": "implicit_reward",
            "attribute_match": 0.75,
        },
    ]
    text = format_table(rows)
    assert "(baseline)" in text and " 75.0% [50, 100]" in text and "3/0/1" in text and "100.0% (h>0)" in text


@pytest.mark.slow
@pytest.mark.embedded
def test_demo_fast_on_embedded_model(tmp_path, monkeypatch):
    """The README's main job in its --fast form, on the real SmolLM2 (under 3 minutes on 2 cores)."""
    import os

    monkeypatch.delenv("FSPO_CACHE", raising=False)
    summary = run_demo(tmp_path / "demo", fast=True, progress=False)
    assert summary["plan"]["model"] == "smollm2"
    assert (tmp_path / "demo" / "eval" / "win_rate.png").exists()
    assert (tmp_path / "demo" / ".cache").exists()  # the model conversion stayed under --out
    assert "FSPO_CACHE" not in os.environ  # and the process environment is left as it was
