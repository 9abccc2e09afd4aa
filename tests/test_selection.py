"""``fspo select``: checkpoints judged on validation users, never on test users; the best linked."""

from __future__ import annotations

import json
import os

import pytest

from fspo.cli import main
from fspo.data.io import load_data
from fspo.data.runs import read_record, resolve_model
from fspo.data.splits import heldout_user_ids
from fspo.eval.selection import validation_users

TRAIN = ["train", "--model", "tiny", "--data", "examples/reviews", "--loss", "sft+ipo", "--shots", "2",
         "--steps", "4", "optim.sft_steps=1", "data.eval_episodes=0", "data.max_length=256",
         "--progress", "false", "--save_every", "2", "--keep_checkpoints", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def run_with_validation(tmp_path_factory):
    out = tmp_path_factory.mktemp("sel") / "run"
    args = [*TRAIN, "--data.heldout_users", "0.3", "--keep_checkpoints_after_finish", "true", "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.mark.slow
def test_select_judges_checkpoints_on_validation_users_only(run_with_validation, capsys):
    run = run_with_validation
    data = load_data("examples/reviews")
    _, test = heldout_user_ids(data, 0.0, 0)
    record = read_record(run)
    val = validation_users(record, data)
    assert val and not set(val) & set(test) and set(val) <= set(record.heldout_users)

    args = ["select", "--run", str(run), "--users", "2", "--queries", "1", "--max_new_tokens", "8", "--quiet"]
    assert main(args) == 0
    summary = json.loads((run / "select" / "selection.json").read_text())
    assert [c["step"] for c in summary["candidates"]] == [2, 4]  # the kept checkpoint and the final model
    assert summary["validation_users"] == val
    for c in summary["candidates"]:
        assert c["users"] and set(c["users"]) <= set(val)  # never a test user, never a training user
        assert 0.0 <= c["win_rate"] <= 1.0 and c["samples"]
    # the test users are not even in the data selection reads
    view = load_data(run / "select" / "data")
    assert not {r.user_id for r in view.prefs} & set(test)

    # RUN/selected is a model folder of the chosen step, with the run record
    chosen = next(c for c in summary["candidates"] if c["step"] == summary["selected_step"])
    selected = run / "selected"
    resolved = resolve_model(str(selected))
    assert resolved.trained and resolved.spec == str(selected) and resolved.layout == record.layout
    assert resolved.selected_on == tuple(val)  # evaluations of it leave the validation users out
    weights = next(f for f in os.listdir(selected) if f.endswith(".safetensors"))
    assert os.path.samefile(selected / weights, os.path.join(chosen["source"], weights))
    assert resolved.reference and os.path.isdir(resolved.reference)  # the relocated record still finds the SFT model

    # selected works wherever a model does
    out = run / "eval-selected"
    assert main(["eval", "--data", "examples/reviews", "--methods", "base,fspo-ipo", "--model", str(selected),
                 "--users", "1", "--queries", "1", "--max-new-tokens", "4", "--no-reward-accuracy",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    evaluated = json.loads((out / "eval.json").read_text())["users"]
    assert evaluated and not set(evaluated) & set(val)  # the users it was selected on are left out

    # a rerun replays the cached answers and chooses the same step
    assert main(args) == 0
    again = json.loads((run / "select" / "selection.json").read_text())
    assert again["selected_step"] == summary["selected_step"]
    assert [c["win_rate"] for c in again["candidates"]] == [c["win_rate"] for c in summary["candidates"]]


@pytest.mark.slow
def test_select_without_validation_users_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--steps", "1", "--save_every", "0", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["select", "--run", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no validation users" in err and "--data.heldout_users" in err


def test_select_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["select", "--run", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a training run folder" in err
    assert main(["select", "--quiet"]) == 2
    assert "run" in capsys.readouterr().err
