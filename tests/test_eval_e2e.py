"""End to end: ``fspo train`` a tiny run, then ``fspo eval`` with both judges; files, schema, cache."""

from __future__ import annotations

import json

import pytest

from fspo.cli import main

EVAL_ARGS = [
    "--data", "examples/reviews",
    "--methods", "base,fewshot,fspo-ipo,oracle",
    "--users", "2", "--queries", "2",
    "--shots", "2", "--shots-curve", "0,2",
    "--max-new-tokens", "8", "--max-length", "256",
    "--n-boot", "200", "--quiet",
]  # fmt: skip


@pytest.mark.slow
def test_eval_attribute_judge_end_to_end(tiny_run, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", *EVAL_ARGS, "--model", str(tiny_run), "--judge", "attribute", "--out", str(out)]) == 0
    for name in ("eval.json", "report.md", "win_rate.png", "reward_accuracy_vs_shots.png", "generations.jsonl"):
        assert (out / name).exists(), name
    res = json.loads((out / "eval.json").read_text())
    assert res["users"] == ["u008", "u010"]  # held-out (split=test) users, evenly spread
    assert res["n_queries"] == 4
    assert set(res["methods"]) == {"base", "fewshot", "fspo-ipo", "oracle"}
    assert set(res["win_rate"]) == {"fewshot", "fspo-ipo", "oracle"}  # the baseline is not compared to itself
    wr = res["win_rate"]["fspo-ipo"]
    assert wr["wins"] + wr["ties"] + wr["losses"] == wr["n"] == 4
    assert 0 <= wr["ci"][0] <= wr["win_rate"] <= wr["ci"][1] <= 1
    assert set(wr["per_user"]) == {"u008", "u010"}
    ra = res["reward_accuracy"]
    assert ra["fspo-ipo"]["splits"]["heldout_users"]["metric"] == "implicit_reward"
    assert ra["fspo-ipo"]["splits"]["heldout_users"]["reference"].endswith("sft/final")
    assert ra["base"]["splits"]["heldout_users"]["metric"] == "loglik"
    assert set(ra["fewshot"]["splits"]["heldout_users"]["points"]) == {"0", "2"}
    assert "heldout_questions" not in ra["base"]["splits"]  # reviews has no test rows of training users
    report = (out / "report.md").read_text()
    assert "![win rate](win_rate.png)" in report and "| fspo-ipo |" in report

    # A rerun replays every generation from the cache and reproduces the numbers.
    assert main(["eval", *EVAL_ARGS, "--model", str(tiny_run), "--judge", "attribute", "--out", str(out)]) == 0
    again = json.loads((out / "eval.json").read_text())
    for m in again["methods"].values():
        assert m["generation"]["cache_hits"] == m["generation"]["calls"] and m["generation"]["generated"] == 0
    assert again["win_rate"] == res["win_rate"]
    assert again["reward_accuracy"] == res["reward_accuracy"]


@pytest.mark.slow
def test_eval_llm_judge_through_a_local_model(tiny_run, tmp_path):
    """--judge-model names a local model: the judge runs it in process (both orders, cached)."""
    out = tmp_path / "eval_local_judge"
    args = ["eval", *EVAL_ARGS, "--model", str(tiny_run), "--judge", "llm", "--judge-model", "tiny"]
    assert main([*args, "--no-reward-accuracy", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["judge"]["name"].startswith("llm:tiny")
    rows = [json.loads(x) for x in (out / "comparisons.jsonl").read_text().splitlines()]
    n = sum(wr["n"] for wr in res["win_rate"].values())
    assert (
        len(rows) == n
        and sum(
            res["judge"]["kinds"].get(m, {}).get(k, 0)
            for m in res["judge"]["kinds"]
            for k in ("agree", "flip", "partial", "unparsed")
        )
        == n
    )
    # the LLM's own verdict on a pair whose orders do not agree is a tie, never a guess (the
    # acceptability gate may still decide the pair: then ``preference`` is the gate's)
    assert all(r["judge_preference"] == 0 for r in rows if r["kind"] != "agree")


@pytest.mark.slow
def test_eval_llm_judge_scripted_end_to_end(tiny_run, tmp_path):
    out = tmp_path / "eval_llm"
    args = ["eval", *EVAL_ARGS, "--model", str(tiny_run), "--judge", "llm", "--judge-model", "scripted"]
    assert main([*args, "--no-reward-accuracy", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["judge"]["name"] == "llm:scripted"
    assert "Verdict: A" in res["judge"]["prompt_example"]
    assert res["reward_accuracy"] == {}
    assert not (out / "reward_accuracy_vs_shots.png").exists()
    for wr in res["win_rate"].values():
        assert 0.0 <= wr["flip_rate"] <= 1.0
    rows = [json.loads(x) for x in (out / "comparisons.jsonl").read_text().splitlines()]
    assert rows and all(r["kind"] in ("agree", "flip", "partial", "unparsed") for r in rows)


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--data", "examples/reviews", "--methods", "fspo-ipo", "--base-model", "tiny",
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "needs a trained model" in capsys.readouterr().err
    assert main(["eval", "--methods", "base,nope", "--out", str(tmp_path)]) == 2


def test_reward_plot_accepts_a_bound_equal_to_the_point(tmp_path):
    """At 100% the Wilson upper bound can round to just below the point; the plot must not fail."""
    from fspo.eval.report import plot_reward_accuracy

    point = {"n": 12, "correct": 12, "accuracy": 1.0, "ci": [0.757, 1.0 - 1e-16]}
    curve = {"metric": "implicit_reward", "reduction": "mean", "layout": "fspo", "points": {"4": point}}
    result = {"reward_accuracy": {"fspo-ipo": {"splits": {"heldout_users": curve}}}}
    plot_reward_accuracy(result, tmp_path / "r.png")
