import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fspo.config import load_config
from fspo.train.config import TrainConfig
from fspo.train.trainer import train

FAST = {"model.name": "tiny", "data.max_length": 1024, "progress": False, "optim.batch_size": 2}


def _cfg(data, out, **overrides) -> TrainConfig:
    return load_config(TrainConfig, None, {**FAST, "data.path": str(data), "out": str(out), **overrides})


def test_ipo_run_writes_loadable_checkpoint_and_metrics(dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    out = train(_cfg(dataset, tmp_path / "run", **{"optim.steps": 4, "eval_every": 2, "save_every": 2}))
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.num_hidden_layers == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert set(rows[0]) == {"stage", "step", "eval/ll_accuracy", "eval/chosen_nll"}  # the starting point
    assert {"loss", "reward_accuracy", "margin", "tokens_per_s", "lr"} <= set(rows[1])
    assert rows[1]["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2)  # IPO at init: h = 0
    assert "eval/reward_accuracy" in rows[2] and "eval/reward_accuracy" in rows[4]
    run = json.loads((out / "fspo_run.json").read_text())
    assert run["heldout_users"] == ["u3", "u4"] and run["layout"] == "fspo"
    assert not (out / "checkpoints").exists()  # freed once final/ is written


def test_keep_checkpoints_after_finish(dataset, tmp_path):
    overrides = {"optim.steps": 3, "save_every": 1, "eval_every": 0, "keep_checkpoints_after_finish": True}
    out = train(_cfg(dataset, tmp_path / "run", **overrides))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002"]


def test_heldout_users_never_reach_training(dataset, tmp_path, tiny):
    from fspo.train.data import prepare_training_data

    _, tok = tiny
    cfg = _cfg(dataset, tmp_path, **{"data.heldout_users": 0.34})
    data = prepare_training_data(cfg.data, tok, seed=0)
    assert set(data.heldout_users) >= {"u3", "u4"} and len(data.heldout_users) == 3
    assert {p.user_id for p in data.train}.isdisjoint(data.heldout_users)
    assert {p.user_id for p in data.eval} <= set(data.heldout_users)
    for pair in data.train:  # no held-out user's text in any training context
        text = tok.decode(pair.prompt_ids + pair.chosen_ids)
        assert not any(f"user {u[1:]} " in text or f"Short {u[1:]}." in text for u in data.heldout_users)


def test_two_stage_lora_recipe(dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    out = train(_cfg(dataset, tmp_path / "run", **{"loss.name": "sft+ipo", "optim.steps": 2, "model.lora": True}))
    assert (out / "sft" / "final" / "config.json").exists() and (out / "ipo" / "final" / "adapter").exists()
    AutoModelForCausalLM.from_pretrained(out / "final")
    run = json.loads((out / "fspo_run.json").read_text())
    assert list(run["stages"]) == ["sft", "ipo"]
    sft_rows = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert "nll" in sft_rows[1] and sft_rows[0]["step"] == 0


def test_two_commands_equal_one(dataset, tmp_path):
    """``--loss sft`` then ``--loss ipo --model <sft run>`` matches ``--loss sft+ipo``."""
    one = train(_cfg(dataset, tmp_path / "one", **{"loss.name": "sft+ipo", "optim.steps": 2}))
    sft = train(_cfg(dataset, tmp_path / "sft", **{"loss.name": "sft", "optim.steps": 2}))
    two = train(_cfg(dataset, tmp_path / "two", **{"loss.name": "ipo", "optim.steps": 2, "model.name": str(sft)}))
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dpo_and_rat_layout(dataset, tmp_path):
    out = train(_cfg(dataset, tmp_path / "rat", **{"loss.name": "dpo", "data.layout": "rat", "optim.steps": 1}))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    assert row["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(dataset, tmp_path):
    args = [
        "--model",
        "tiny",
        "--data",
        str(dataset),
        "--steps",
        "80",
        "--save-every",
        "3",
        "--eval-every",
        "0",
        "--progress",
        "false",
        "--data.max_length",
        "1024",
    ]
    cmd = [sys.executable, "-m", "fspo.cli", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([*cmd, "--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    resumed = subprocess.run([*cmd, "--out", str(killed)], env=env, capture_output=True, text=True, check=True)
    assert "resuming from" in resumed.stdout + resumed.stderr
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 81))  # nothing lost, nothing logged twice
    assert not (killed / "checkpoints").exists()  # a finished run resumes from final/; checkpoints are freed


def test_config_yaml_and_overrides(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model:\n  name: tiny\noptim:\n  lr: 1.0e-4\n  steps: 7\nloss:\n  name: dpo\n")
    cfg = load_config(TrainConfig, yaml_file, {"optim.steps": "9", "loss.beta": "0.5"})
    assert (cfg.model.name, cfg.optim.lr, cfg.optim.steps, cfg.loss.name, cfg.loss.beta) == (
        "tiny",
        1e-4,
        9,
        "dpo",
        0.5,
    )
    from fspo.errors import FspoError

    with pytest.raises(FspoError, match=r"optim.stepz: unknown option"):
        load_config(TrainConfig, None, {"optim.stepz": "1"})
    with pytest.raises(FspoError, match=r"optim.steps: expected int"):
        load_config(TrainConfig, None, {"optim.steps": "many"})


def test_cli_help_documents_every_option():
    from fspo.config import iter_leaves

    out = subprocess.run([sys.executable, "-m", "fspo.cli", "train", "--help"], capture_output=True, text=True).stdout
    for name, _, _ in iter_leaves(TrainConfig):
        assert f"--{name}" in out
    for alias in ("--data", "--model", "--loss", "--shots", "--out", "--config"):
        assert alias in out


def test_cli_user_errors_are_one_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "fspo.cli", "train", "--model", "tiny", "--data", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("fspo train: error:")
    bad = subprocess.run(
        [sys.executable, "-m", "fspo.cli", "train", "--model", "no/such/model", "--data", "examples/reviews"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert bad.returncode == 2 and "nothing is downloaded" in bad.stderr and "Traceback" not in bad.stderr
