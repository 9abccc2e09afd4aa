"""The in-process backend through the pipeline: tiny random model (fast) and the embedded SmolLM2 (slow)."""

from __future__ import annotations

import json

import pytest

from fspo.cli import main
from fspo.data.io import load_data, validate_file

DOMAIN = """
name: small
description: quick questions
axes:
  taste: {values: [sweet food, spicy food]}
persona: {core: "This user loves {taste}.", elaborate: true}
questions: {source: list, items: ["What should I cook tonight?", "What snack should I bring to a party?"]}
responses:
  source: views
  views: 2
  max_new_tokens: 24
  prompt: "Question: {question}\\nFrom this view: {view}\\nAnswer in one sentence."
labeler: judge
refine: {enabled: true, rounds: 1, max_facts: 1}
"""


def run(tmp_path, model: str) -> tuple[int, object]:
    dom = tmp_path / "small.yaml"
    dom.write_text(DOMAIN)
    out = tmp_path / "out"
    rc = main(
        [
            "synth",
            "--domain",
            str(dom),
            "--users",
            "2",
            "--questions",
            "2",
            "--backend",
            "local",
            "--model",
            model,
            "--out",
            str(out),
            "--no-embed",
            "--no-plots",
            "--quiet",
            "--heldout-users",
            "0.5",
        ]
    )
    return rc, out


def _accounted(out) -> dict:
    """Every selected pair is either written or counted as dropped: nothing vanishes silently."""
    counts = json.loads((out / "diagnostics" / "diagnostics.json").read_text())["counts"]
    dropped = counts.get("pairs_dropped_inconsistent", 0) + counts.get("pairs_dropped_invalid", 0)
    assert counts.get("prefs_written", 0) + dropped == counts["pairs_selected"]
    return counts


def test_tiny_local_backend_with_logprob_judge(tmp_path, capsys):
    """Seeded tiny weights and greedy log-prob verdicts: the same run every time, and it writes data."""
    rc, out = run(tmp_path, "tiny")
    assert rc == 0, capsys.readouterr().err
    counts = _accounted(out)
    assert counts["prefs_written"] == 4 and counts["users"] == 2
    assert validate_file(out / "prefs.jsonl") == [] and validate_file(out / "users.jsonl") == []
    prefs = load_data(out).prefs
    assert all(r.meta["judge"] == "tiny:logprob" for r in prefs)
    assert {r.split for r in prefs} == {"train", "test"}  # --heldout-users 0.5 of 2 users: one each
    run_info = json.loads((out / "diagnostics" / "run.json").read_text())
    assert run_info["cache_entries"] > 0
    rc2, _ = run(tmp_path, "tiny")  # a rerun replays every call from the cache, same bytes
    assert (
        rc2 == 0
        and json.loads((out / "diagnostics" / "run.json").read_text())["cache_entries"] == run_info["cache_entries"]
    )


def test_local_choice_logprobs_shape():
    from fspo.llm.local import LocalBackend

    llm = LocalBackend.from_spec("tiny", batch_size=2)
    scores = llm.choice_logprobs(["a b", "c", "d e f"], [" A", " B"], prefix="Verdict:")
    assert len(scores) == 3 and all(len(s) == 2 and all(x <= 0 for x in s) for s in scores)


@pytest.mark.slow
@pytest.mark.embedded
def test_embedded_smollm2_small_run(tmp_path, capsys):
    """A 135M judge is heavily position-biased: all pairs may be dropped, but the run and diagnostics complete."""
    rc, out = run(tmp_path, "smollm2")
    d = json.loads((out / "diagnostics" / "diagnostics.json").read_text())
    assert d["counts"]["users"] == 2 and d["order_consistency"]["before"] is not None
    _accounted(out)  # whether or not a pair survives both orders, every pair is accounted for
    if rc == 0:
        assert validate_file(out / "prefs.jsonl") == [] and validate_file(out / "users.jsonl") == []
    else:
        assert "no preference survived labeling" in capsys.readouterr().err
