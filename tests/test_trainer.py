import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fspo.config import load_config
from fspo.errors import FspoError
from fspo.train import trainer
from fspo.train.config import TrainConfig
from fspo.train.trainer import train

FAST = {"model.name": "tiny", "data.max_length": 1024, "progress": False, "optim.batch_size": 2}


def _cfg(data, out, **overrides) -> TrainConfig:
    return load_config(TrainConfig, None, {**FAST, "data.path": str(data), "out": str(out), **overrides})


def _steps(path: Path) -> list[int]:
    return [json.loads(x)["step"] for x in path.read_text().splitlines()]


def assert_trained(weights: dict) -> None:
    """The weights are not the tiny model's initial ones: training stepped (a no-op trainer fails here)."""
    from fspo.models.registry import load_model

    init = load_model("tiny")[0].state_dict()
    changed = [k for k in weights if not torch.equal(weights[k], init[k])]
    assert len(changed) > len(weights) // 2, f"only {changed} changed"


class Killed(Exception):
    """Stands for a kill -9 in-process: everything up to the stage's final model is written."""


def kill_before_final(monkeypatch, stage_dir_name: str | None = None):
    """Make ``save_final`` fail (of every stage, or of the stage whose folder has this name)."""
    original = trainer.save_final

    def save_final(accelerator, policy, tok, final_dir, cfg):
        if stage_dir_name is None or final_dir.parent.name == stage_dir_name:
            raise Killed(str(final_dir))
        return original(accelerator, policy, tok, final_dir, cfg)

    monkeypatch.setattr(trainer, "save_final", save_final)
    return lambda: monkeypatch.setattr(trainer, "save_final", original)


def test_ipo_run_writes_loadable_checkpoint_and_metrics(dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    out = train(_cfg(dataset, tmp_path / "run", **{"optim.steps": 4, "eval_every": 2, "save_every": 2}))
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.num_hidden_layers == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert set(rows[0]) == {"stage", "step", "eval/ll_accuracy", "eval/chosen_nll"}  # the starting point
    assert {
        "loss",
        "rewards/accuracies",
        "rewards/margins",
        "rewards/chosen",
        "logps/chosen",
        "tokens_per_s",
        "lr",
    } <= set(rows[1])
    assert rows[1]["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2)  # IPO at init: h = 0
    assert "eval/reward_accuracy" in rows[2] and "eval/reward_accuracy" in rows[4]
    run = json.loads((out / "fspo_run.json").read_text())
    assert run["heldout_users"] == ["u3", "u4"] and run["layout"] == "fspo"
    assert not (out / "checkpoints").exists()  # freed once final/ is written


def test_keep_checkpoints_while_training_and_after_finish(dataset, tmp_path, monkeypatch):
    """keep_checkpoints=N prunes to the newest N after every save; a finished stage then deletes
    them unless keep_checkpoints_after_finish."""
    seen = []
    original = trainer.save_checkpoint

    def save_checkpoint(accelerator, policy, tok, optimizer, scheduler, stage_dir, step, cfg):
        original(accelerator, policy, tok, optimizer, scheduler, stage_dir, step, cfg)
        seen.append(sorted(p.name for p in (stage_dir / "checkpoints").iterdir()))

    monkeypatch.setattr(trainer, "save_checkpoint", save_checkpoint)
    overrides = {"optim.steps": 4, "save_every": 1, "eval_every": 0}
    kept = train(_cfg(dataset, tmp_path / "kept", keep_checkpoints=1, keep_checkpoints_after_finish=True, **overrides))
    assert seen == [["step-000001"], ["step-000002"], ["step-000003"]]
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["step-000003"]
    seen.clear()
    freed = train(_cfg(dataset, tmp_path / "freed", keep_checkpoints=2, **overrides))
    assert seen == [["step-000001"], ["step-000001", "step-000002"], ["step-000002", "step-000003"]]
    assert not (freed / "checkpoints").exists()


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
    assert_trained(a)  # two untrained models are equal too


def test_dpo_and_rat_layout(dataset, tmp_path):
    out = train(_cfg(dataset, tmp_path / "rat", **{"loss.name": "dpo", "data.layout": "rat", "optim.steps": 1}))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    assert row["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)


def test_final_folder_copied_away_describes_itself(dataset, tmp_path):
    """final/ holds the run record and a model card: copied away from its run it serves and
    evaluates with the layout, shots and budget it was trained with (issue 17)."""
    import shutil

    from fspo.data.io import load_data
    from fspo.data.runs import resolve_model
    from fspo.eval.config import EvalConfig
    from fspo.eval.runner import plan_eval
    from fspo.serve.personalize import Engine

    overrides = {"data.layout": "rat", "data.shots": 2, "data.max_length": 700, "optim.steps": 1}
    out = train(_cfg(dataset, tmp_path / "run", **overrides))
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(out / "final", moved)
    shutil.rmtree(out)
    info = resolve_model(str(moved))
    assert (info.spec, info.layout, info.n_shots, info.max_length, info.trained) == (str(moved), "rat", 2, 700, True)
    card = (moved / "README.md").read_text()
    assert card.startswith('---\nbase_model: "tiny"') and "layout-rat" in card and "| shots" in card
    assert "## User Description" in card and "<question 2>" in card  # the example prompt, RAT-style
    engine = Engine.load(info, cache_users=0)
    shots = load_data(str(dataset)).prefs[:3]
    rendered = engine.render(shots, "A new question?", max_new_tokens=16)
    assert rendered.shots_used == 2 and rendered.text.endswith("## User Description")
    plan = plan_eval(EvalConfig(data=str(dataset), methods=["fspo-rat"], model=str(moved), out=str(tmp_path / "e")))
    assert plan.shots == 2 and plan.budgets["fspo-rat"] == 700 and plan.budgets["base"] == 700


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
    assert_trained(a)
    assert _steps(killed / "metrics.jsonl") == list(range(1, 81))  # nothing lost, nothing logged twice
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
    cmd = [sys.executable, "-m", "fspo.cli", "train"]
    out = tmp_path / "runs" / "x"
    run = subprocess.run(
        [*cmd, "--model", "tiny", "--data", str(tmp_path / "missing"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("fspo train: error:")
    bad = subprocess.run(
        [*cmd, "--model", "no/such/model", "--data", "examples/reviews", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert bad.returncode == 2 and "nothing is downloaded" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "runs").exists()  # no empty --out (nor its parents) after an error


def test_a_data_error_leaves_an_existing_run_as_it_was(dataset, tmp_path):
    out = train(_cfg(dataset, tmp_path / "run", **{"optim.steps": 1}))
    before = sorted(p.name for p in out.iterdir())
    (dataset / "prefs.jsonl").write_text("{not json\n")
    with pytest.raises(FspoError, match="invalid JSON"):
        train(_cfg(dataset, out, **{"optim.steps": 1}))
    assert sorted(p.name for p in out.iterdir()) == before


def test_unloadable_models_and_damaged_checkpoints_are_one_line_errors(dataset, tmp_path, monkeypatch):
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    with pytest.raises(FspoError, match=r"bad-model: cannot load the tokenizer: \w+"):
        train(_cfg(dataset, tmp_path / "new" / "run", **{"model.name": str(bad)}))
    assert not (tmp_path / "new").exists()

    cfg = _cfg(dataset, tmp_path / "run", **{"optim.steps": 3, "save_every": 1, "keep_checkpoints": 0})
    restore = kill_before_final(monkeypatch)
    with pytest.raises(Killed):
        train(cfg)
    restore()
    newest = tmp_path / "run" / "checkpoints" / "step-000002"
    (newest / "optimizer.bin").write_bytes(b"not a pickle")
    with pytest.raises(
        FspoError, match=r"step-000002: cannot resume: .*; delete .*step-000002 to resume from an older"
    ):
        train(cfg)
    (newest / "trainer_state.json").write_text("{")
    with pytest.raises(FspoError, match=r"trainer_state.json: damaged"):
        train(cfg)
    (newest.parent / "step-junk").mkdir()
    (newest.parent / "step-junk" / "trainer_state.json").write_text('{"step": 9}')
    shutil.rmtree(newest)  # the older checkpoint still resumes; a foreign step-* folder is not one
    assert train(cfg) and _steps(tmp_path / "run" / "metrics.jsonl") == [0, 1, 2, 3]


def test_a_second_train_on_a_busy_folder_is_refused(dataset, tmp_path):
    """The run folder is locked for the whole run: a second writer gets a one-line error at once."""
    from fspo.data.io import lock_output

    out = tmp_path / "run"
    with lock_output(out):  # as a running `fspo train` holds it
        with pytest.raises(FspoError, match="another fspo process is writing here"):
            train(_cfg(dataset, out, **{"optim.steps": 1}))
        cli = subprocess.run(
            [sys.executable, "-m", "fspo.cli", "train", "--model", "tiny", "--data", str(dataset), "--out", str(out)],
            capture_output=True,
            text=True,
        )
        assert cli.returncode == 2 and "Traceback" not in cli.stderr
        assert cli.stderr.strip().splitlines() == [
            f"fspo train: error: {out}: another fspo process is writing here (pid {os.getpid()})"
        ]
        assert [p.name for p in out.iterdir()] == [".fspo.lock"]  # neither wrote anything


def test_rerun_of_a_finished_run_with_another_config_is_refused(dataset, tmp_path, capsys):
    """Issue 14: a rerun with a different config used to print "already finished", keep the old
    weights and rewrite fspo_run.json to the new config."""
    from fspo.data.runs import read_record
    from fspo.train.fingerprint import FINGERPRINT_FILE, read_fingerprint

    out = train(_cfg(dataset, tmp_path / "run", **{"optim.steps": 2}))
    record, weights = (out / "fspo_run.json").read_text(), (out / "final" / "model.safetensors").read_bytes()
    assert read_record(out).fingerprint == read_fingerprint(out).digest
    assert read_record(out).metrics["ipo/step"] == 2 and "ipo/eval/reward_accuracy" in read_record(out).metrics
    capsys.readouterr()
    train(_cfg(dataset, out, **{"optim.steps": 2, "eval_every": 1, "save_every": 1}))  # run options only
    assert "[ipo] already finished" in capsys.readouterr().out
    with pytest.raises(FspoError) as err:
        train(_cfg(dataset, out, **{"optim.steps": 2, "optim.lr": 1e-4, "data.shots": 2}))
    assert str(err.value) == (
        f"{out}: trained with a different configuration (data.shots: 4 -> 2, optim.lr: 5e-05 -> 0.0001); "
        "use --overwrite to start over"
    )
    with pytest.raises(FspoError, match=r"\(model.ref: null -> tiny\); use --overwrite"):
        train(_cfg(dataset, out, **{"optim.steps": 2, "model.ref": "tiny"}))
    with pytest.raises(FspoError, match=r"model.name .* is inside --out .*; train into another folder"):
        train(_cfg(dataset, out, **{"optim.steps": 2, "model.name": str(out), "overwrite": True}))
    moved = dataset.rename(tmp_path / "moved")  # the same records elsewhere are the same data
    train(_cfg(moved, out, **{"optim.steps": 2}))
    record = (out / "fspo_run.json").read_text()
    with (moved / "prefs.jsonl").open("a") as fh:
        fh.write(json.dumps({"user_id": "u0", "prompt": "New?", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(FspoError, match=r"\(data: changed\); use --overwrite"):
        train(_cfg(moved, out, **{"optim.steps": 2}))
    assert (out / "fspo_run.json").read_text() == record  # refused before writing anything
    assert (out / "final" / "model.safetensors").read_bytes() == weights

    # A run from before fingerprints: its recorded config is compared; without a record it is refused.
    (out / FINGERPRINT_FILE).unlink()
    with pytest.raises(FspoError, match=r"\(optim.lr: 5e-05 -> 0.0001\)"):
        train(_cfg(moved, out, **{"optim.steps": 2, "optim.lr": 1e-4}))
    train(_cfg(moved, out, **{"optim.steps": 2}))
    assert "cannot be checked" in capsys.readouterr().out and (out / FINGERPRINT_FILE).exists()
    (out / FINGERPRINT_FILE).unlink()
    (out / "fspo_run.json").unlink()
    with pytest.raises(FspoError, match=r"run: holds heldout_users.jsonl, metrics.jsonl, final but no fingerprint"):
        train(_cfg(moved, out, **{"optim.steps": 2}))

    # --overwrite starts over, deleting only the old run's files
    (out / "notes.txt").write_text("mine")
    train(_cfg(moved, out, **{"optim.steps": 2, "optim.lr": 1e-4, "overwrite": True}))
    assert read_record(out).config["optim"]["lr"] == 1e-4 and (out / "notes.txt").read_text() == "mine"
    assert (out / "final" / "model.safetensors").read_bytes() != weights
    assert read_record(out).fingerprint == read_fingerprint(out).digest


def test_model_identity_follows_the_weights_not_the_path(tmp_path):
    from fspo.train.fingerprint import model_identity

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = bytearray(range(256)) * (40 << 12)  # 40 MiB: hashed in sampled chunks
    (model / "model.safetensors").write_bytes(weights)
    first = model_identity(str(model))
    assert model_identity("tiny") == "tiny" and first.startswith("sha256:")
    copy = shutil.copytree(model, tmp_path / "copy")  # other path, other mtimes: the same model
    (copy / "fspo_run.json").write_text("{}")  # a run record is not part of the weights
    assert model_identity(str(copy)) == first
    for offset in (0, len(weights) - 1):  # retrained weights change everywhere; the ends are always read
        changed = bytearray(weights)
        changed[offset] ^= 1
        (copy / "model.safetensors").write_bytes(changed)
        assert model_identity(str(copy)) != first


def test_resume_of_a_killed_run_checks_its_config_and_tolerates_a_torn_metrics_line(
    dataset, tmp_path, monkeypatch, capsys
):
    overrides = {"optim.steps": 4, "save_every": 2, "eval_every": 2}
    straight = train(_cfg(dataset, tmp_path / "straight", **overrides))
    restore = kill_before_final(monkeypatch)
    with pytest.raises(Killed):
        train(_cfg(dataset, tmp_path / "run", **overrides))
    restore()
    out = tmp_path / "run"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]
    with pytest.raises(FspoError, match=r"\(optim.lr: 5e-05 -> 0.0001\); use --overwrite"):
        train(_cfg(dataset, out, **{**overrides, "optim.lr": 1e-4}))
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"stage": "ipo", "step": 5, "loss": 2')  # a kill -9 in the middle of a line
    capsys.readouterr()
    train(_cfg(dataset, out, **overrides))
    assert "resuming from" in capsys.readouterr().out
    assert _steps(out / "metrics.jsonl") == [0, 1, 2, 3, 4]
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_after_a_kill_before_the_first_checkpoint_logs_each_step_once(dataset, tmp_path, monkeypatch):
    cfg = _cfg(dataset, tmp_path / "run", **{"optim.steps": 3, "save_every": 0, "eval_every": 2})
    restore = kill_before_final(monkeypatch)
    with pytest.raises(Killed):
        train(cfg)
    restore()
    assert _steps(tmp_path / "run" / "metrics.jsonl") == [0, 1, 2, 3]
    out = train(cfg)
    assert _steps(out / "metrics.jsonl") == [0, 1, 2, 3]


def test_resume_of_a_two_stage_run_killed_in_its_second_stage(dataset, tmp_path, monkeypatch, capsys):
    overrides = {"loss.name": "sft+ipo", "optim.steps": 4, "save_every": 2, "eval_every": 0}
    straight = train(_cfg(dataset, tmp_path / "straight", **overrides))
    restore = kill_before_final(monkeypatch, "ipo")
    with pytest.raises(Killed):
        train(_cfg(dataset, tmp_path / "run", **overrides))
    restore()
    out = tmp_path / "run"
    assert (out / "sft" / "final" / "config.json").exists() and not (out / "ipo" / "final").exists()
    capsys.readouterr()
    train(_cfg(dataset, out, **overrides))
    log = capsys.readouterr().out
    assert "[sft] already finished" in log and "[ipo] resuming from" in log
    for name in ("sft/final", "ipo/final", "final"):
        a, b = load_file(straight / name / "model.safetensors"), load_file(out / name / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert_trained(a)
    assert _steps(out / "ipo" / "metrics.jsonl") == [1, 2, 3, 4]


def test_resume_of_a_lora_run(dataset, tmp_path, monkeypatch, capsys):
    from fspo.models.registry import load_model

    overrides = {"model.lora": True, "optim.lr": 1e-3, "optim.steps": 4, "save_every": 2, "eval_every": 0}
    straight = train(_cfg(dataset, tmp_path / "straight", **overrides))
    restore = kill_before_final(monkeypatch)
    with pytest.raises(Killed):
        train(_cfg(dataset, tmp_path / "run", **overrides))
    restore()
    capsys.readouterr()
    out = train(_cfg(dataset, tmp_path / "run", **overrides))
    assert "resuming from" in capsys.readouterr().out
    for name in ("final/model.safetensors", "final/adapter/adapter_model.safetensors"):
        a, b = load_file(straight / name), load_file(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    merged, init = load_file(out / "final" / "model.safetensors"), load_model("tiny")[0].state_dict()
    linear = [k for k in merged if k.endswith("proj.weight")]
    assert linear and all(not torch.equal(merged[k], init[k]) for k in linear)  # the adapters learned
    assert all(torch.equal(merged[k], init[k]) for k in merged if k not in linear)  # the rest stayed frozen


def test_report_to_tensorboard(dataset, tmp_path, monkeypatch):
    """The nested config crashed tensorboard's add_hparams; it gets dotted keys and scalars. A resumed
    run purges the events logged past its checkpoint."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(dataset, tmp_path / "run", **{"optim.steps": 4, "save_every": 2, "report_to": "tensorboard"})
    restore = kill_before_final(monkeypatch)
    with pytest.raises(Killed):
        train(cfg)
    restore()
    out = train(cfg)
    events = EventAccumulator(str(out / "fspo-ipo"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]


def test_wandb_is_one_run_per_command_with_both_stages(tmp_path):
    from fspo.train.trainer import tracker_setup

    cfg = load_config(
        TrainConfig,
        None,
        {"out": str(tmp_path / "my-run"), "report_to": "wandb", "loss.name": "sft+ipo", "optim.sft_steps": 6},
    )
    sft = tracker_setup(cfg, "sft", 0)
    ipo = tracker_setup(cfg, "ipo", 3)
    assert sft[0] == ipo[0] == "fspo" and sft[1] == ipo[1]  # same project, name and id: one run
    assert sft[1]["wandb"]["name"] == "my-run" and sft[1]["wandb"]["resume"] == "allow"
    assert (sft[2], ipo[2]) == (0, 6)  # the IPO stage's steps continue after SFT's
    tb = load_config(TrainConfig, None, {"out": str(tmp_path / "r"), "report_to": "tensorboard"})
    assert tracker_setup(tb, "ipo", 4) == ("fspo-ipo", {"tensorboard": {"purge_step": 5}}, 0)


def test_rerun_of_a_finished_run_does_not_tokenize_its_data(dataset, tmp_path, monkeypatch, capsys):
    out = train(_cfg(dataset, tmp_path / "run", **{"optim.steps": 1}))
    weights = (out / "final" / "model.safetensors").read_bytes()

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a finished run tokenized its data again")

    monkeypatch.setattr(trainer, "prepare_training_data", no_tokenizing)
    capsys.readouterr()
    train(_cfg(dataset, out, **{"optim.steps": 1, "save_every": 3}))  # run options only
    assert "[ipo] already finished" in capsys.readouterr().out
    assert (out / "final" / "model.safetensors").read_bytes() == weights
    assert json.loads((out / "fspo_run.json").read_text())["config"]["save_every"] == 3
    with pytest.raises(AssertionError, match="tokenized its data again"):  # a different run is not finished
        train(_cfg(dataset, tmp_path / "other", **{"optim.steps": 1}))
