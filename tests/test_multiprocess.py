"""Multi-process training, proven on this CPU: ``accelerate launch`` with 2 processes (gloo).

Two processes with ``optim.batch_size`` 1 (the per-process micro-batch) train the same weights as
one process with batch_size 2 (the same global batch), no pair is trained twice within a step, a
``kill -9`` of a process followed by a rerun gives the uninterrupted run's weights, and the final
model loads. ``accelerate launch --num_processes 2 --cpu`` would start ONE process (accelerate
runs several CPU processes only through mpirun); ``--multi_gpu`` starts them with torchrun, and
on a machine without GPUs fspo's Accelerator(cpu=True) then joins them over gloo.

A wrapper around ``fspo.cli`` records, in each process, the indices (into the training pairs) of
every micro-batch it trains on, and can SIGKILL the main process right after a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

STEPS, SAVE_EVERY, GRAD_ACCUM = 6, 2, 2
COMMON = [
    "--model", "tiny",
    "--loss", "ipo",
    "--steps", str(STEPS),
    "--save-every", str(SAVE_EVERY),
    "--eval-every", "0",
    "--progress", "false",
    "--data.max_length", "1024",
    "--optim.optimizer", "adamw",  # has state (moments) that resuming must restore
    "--lr", "1e-3",
    "--optim.warmup_steps", "2",  # a schedule stepped once per process would show in the lr column
    "--optim.max_grad_norm", "1.0",  # clipping is active (grad norms are ~40)
    "--optim.grad_accum", str(GRAD_ACCUM),
]  # fmt: skip

WRAPPER = """
import json, os, signal, sys
from fspo import cli
from fspo.train import trainer

train_pairs = []
prepare = trainer.prepare_training_data
def prepare_training_data(*args, **kwargs):
    data = prepare(*args, **kwargs)
    train_pairs[:] = data.train
    return data
trainer.prepare_training_data = prepare_training_data

stage_loss = trainer.stage_loss
def logged_stage_loss(stage, policy, ref_model, pairs, *args, **kwargs):
    ids = [next(i for i, x in enumerate(train_pairs) if x is p) for p in pairs]
    with open(os.environ["FSPO_TEST_PAIRS"] + "." + os.environ.get("RANK", "0"), "a") as fh:
        fh.write(json.dumps(ids) + "\\n")
    return stage_loss(stage, policy, ref_model, pairs, *args, **kwargs)
trainer.stage_loss = logged_stage_loss

import accelerate
def logged(name):  # which collectives each process takes part in (FSDP gathering needs every one)
    method = getattr(accelerate.Accelerator, name)
    def call(self, *args, **kwargs):
        with open(os.environ["FSPO_TEST_PAIRS"] + ".calls." + os.environ.get("RANK", "0"), "a") as fh:
            fh.write(name + "\\n")
        return method(self, *args, **kwargs)
    setattr(accelerate.Accelerator, name, call)
logged("get_state_dict")
logged("save_state")

if os.environ.get("FSPO_TEST_KILL_AFTER_CHECKPOINT"):
    save_checkpoint = trainer.save_checkpoint
    def save_then_die(accelerator, *args, **kwargs):
        save_checkpoint(accelerator, *args, **kwargs)
        if accelerator.is_main_process:
            os.kill(os.getpid(), signal.SIGKILL)
    trainer.save_checkpoint = save_then_die

sys.exit(cli.main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp: Path, out: Path, processes: int, batch_size: int, *extra: str, check: bool = True, **env_extra):
    wrapper = tmp / "fspo_wrapper.py"
    wrapper.write_text(WRAPPER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", FSPO_TEST_PAIRS=str(out) + ".pairs", **env_extra)
    args = ["train", *COMMON, "--data", str(tmp / "data"), "--optim.batch_size", str(batch_size), "--out", str(out)]
    args += extra  # later flags win
    if processes == 1:
        cmd = [sys.executable, str(wrapper), *args]
    else:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
        launch = ["launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
        launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
        cmd = [accelerate, *launch, str(wrapper), *args]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def _pairs(out: Path, rank: int) -> list[list[int]]:
    """The micro-batches process ``rank`` trained on, in order (grad_accum per optimizer step)."""
    path = Path(f"{out}.pairs.{rank}")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 2, two processes with batch 1 (the same global batch of 2 x 2 = 4
    pairs per step), and one process with batch 1 (half the global batch: a control)."""
    from conftest import write_dataset

    tmp = tmp_path_factory.mktemp("mp")
    write_dataset(tmp / "data")
    two = _run(tmp, tmp / "two", processes=2, batch_size=1)
    _run(tmp, tmp / "one", processes=1, batch_size=2)
    _run(tmp, tmp / "half", processes=1, batch_size=1)
    return tmp, two


def test_two_processes_train_what_one_process_trains_with_the_same_global_batch(runs):
    from transformers import AutoModelForCausalLM

    tmp, two = runs
    assert "[ipo] 2 processes (MULTI_CPU, gloo): 1 x 2 x 2 = 4 pairs per optimizer step" in two.stdout
    assert two.stdout.count("model: ") == 1  # only the main process reports (and writes)
    per_rank = [_pairs(tmp / "two", r) for r in (0, 1)]
    one = _pairs(tmp / "one", 0)
    assert len(per_rank[0]) == len(per_rank[1]) == len(one) == STEPS * GRAD_ACCUM
    for step in range(STEPS):
        micro = range(step * GRAD_ACCUM, (step + 1) * GRAD_ACCUM)
        used = [i for m in micro for r in (0, 1) for i in per_rank[r][m]]
        assert len(used) == len(set(used)) == 4, f"step {step + 1}: a pair trained twice: {used}"
        for m in micro:  # each micro-batch of the two processes is that of one process with batch 2
            assert per_rank[0][m] + per_rank[1][m] == one[m]

    # Every process gathers the weights for each checkpoint (steps 2 and 4) and for the final model,
    # and saves its part of accelerate's state (its RNG) for each checkpoint: none returns early.
    # (save_state calls get_state_dict itself outside FSDP; the pre-hook then drops the weights.)
    for rank in (0, 1):
        calls = Path(f"{tmp / 'two'}.pairs.calls.{rank}").read_text().split()
        checkpoint = ["get_state_dict", "save_state", "get_state_dict"]
        assert calls == checkpoint * 2 + ["get_state_dict"], (rank, calls)

    a, b, half = _weights(tmp / "two"), _weights(tmp / "one"), _weights(tmp / "half")
    assert _max_diff(a, b) < 1e-5
    assert _max_diff(half, b) > 1e-3  # the comparison can tell another batch apart
    rows = {
        name: [json.loads(x) for x in (tmp / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("two", "one")
    }
    assert [r["step"] for r in rows["two"]] == list(range(1, STEPS + 1))
    assert [r["lr"] for r in rows["two"]] == [r["lr"] for r in rows["one"]]  # one scheduler step per step
    for r2, r1 in zip(rows["two"], rows["one"], strict=True):  # metrics are means over both processes
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-5)  # clipped on the all-reduced gradient
    model = AutoModelForCausalLM.from_pretrained(tmp / "two" / "final")
    assert model.config.num_hidden_layers == 2
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in a)


def test_kill_9_of_a_process_then_resume_gives_the_uninterrupted_weights(runs):
    tmp, _ = runs
    out = tmp / "killed"
    killed = _run(tmp, out, processes=2, batch_size=1, check=False, FSPO_TEST_KILL_AFTER_CHECKPOINT="1")
    assert killed.returncode != 0
    checkpoint = out / "checkpoints" / f"step-{SAVE_EVERY:06d}"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [checkpoint.name]
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl", "random_states_1.pkl"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert json.loads((checkpoint / "trainer_state.json").read_text()) == {"step": SAVE_EVERY, "num_processes": 2}
    assert not (out / "final").exists()

    other = _run(tmp, out, processes=1, batch_size=1, check=False)  # the data order depends on the process count
    assert other.returncode == 2 and "written by 2 process(es), resumed with 1" in other.stderr
    resumed = _run(tmp, out, processes=2, batch_size=1)
    assert f"resuming from {checkpoint}" in resumed.stdout + resumed.stderr
    straight, again = _weights(tmp / "two"), _weights(out)
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # nothing lost, nothing logged twice
    assert not (out / "checkpoints").exists()


def test_two_process_lora_two_stage_run_equals_one_process(tmp_path):
    """LoRA's reference is the policy with its adapters disabled, reached through the DDP wrapper;
    SFT then IPO, each stage on two processes."""
    from conftest import write_dataset

    tmp = tmp_path
    write_dataset(tmp / "data")
    lora = ["--loss", "sft+ipo", "--steps", "3", "--model.lora", "true", "--lr", "1e-3"]
    two = _run(tmp, tmp / "lora-two", 2, 1, *lora)
    assert "[sft] 2 processes" in two.stdout and "[ipo] 2 processes" in two.stdout
    _run(tmp, tmp / "lora-one", 1, 2, *lora)
    for name in ("sft/final/model.safetensors", "final/model.safetensors", "final/adapter/adapter_model.safetensors"):
        a, b = load_file(tmp / "lora-two" / name), load_file(tmp / "lora-one" / name)
        assert _max_diff(a, b) < 1e-5, name
    adapters = load_file(tmp / "lora-two" / "final/adapter/adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and adapters[k].abs().max() > 5e-4 for k in adapters)  # they learned
