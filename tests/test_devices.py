"""``--device auto|cpu|cuda|mps`` and ``--dtype`` for eval, serve, personalize, study and the local
synth backend: the options parse, reach ``load_model``, and a missing GPU is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch

import fspo.models.registry as registry
from fspo.cli import main
from fspo.config import from_dict, shipped_path
from fspo.errors import FspoError
from fspo.eval.config import EvalConfig
from fspo.models.registry import load_model, resolve_device
from fspo.serve.config import PersonalizeConfig, ServeConfig, StudyServeConfig
from fspo.synth.config import SynthConfig

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
CONFIGS = {
    EvalConfig: {},
    PersonalizeConfig: {"model": "tiny", "prefs": "p.jsonl"},
    ServeConfig: {"model": "tiny"},
    StudyServeConfig: {"db": "s.sqlite"},
    SynthConfig: {"out": "o"},
}


@pytest.fixture()
def calls(monkeypatch) -> list[dict]:
    """Every load_model call's arguments; the model is the tiny one, loaded on the CPU."""
    seen: list[dict] = []
    real = registry.load_model

    def record(spec, dtype="float32", seed=0, device=None):
        seen.append({"spec": spec, "dtype": dtype, "device": device})
        return real(spec, "float32", seed, "cpu")

    monkeypatch.setattr(registry, "load_model", record)
    return seen


@pytest.mark.parametrize("cls", list(CONFIGS))
def test_options_default_like_training_and_are_checked(cls) -> None:
    cfg = from_dict(cls, CONFIGS[cls])
    assert (cfg.device, cfg.dtype) == ("auto", "float32")
    cfg = from_dict(cls, CONFIGS[cls] | {"device": "cuda", "dtype": "bf16"})
    assert (cfg.device, cfg.dtype) == ("cuda", "bf16")
    with pytest.raises(FspoError, match="device: expected one of auto, cpu, cuda, mps, got 'tpu'"):
        from_dict(cls, CONFIGS[cls] | {"device": "tpu"})
    with pytest.raises(FspoError, match="dtype"):
        from_dict(cls, CONFIGS[cls] | {"dtype": "int8"})


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(registry, "_mps_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setattr(registry, "_mps_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_bf16_on_cpu_warns(capsys) -> None:
    model, _ = load_model("tiny", "bf16", device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert "about 10x slower than float32" in capsys.readouterr().err
    load_model("tiny", "float32", device="cpu")
    assert capsys.readouterr().err == ""


@NO_CUDA
def test_missing_cuda_is_a_clear_error() -> None:

    with pytest.raises(FspoError, match="--device cuda: CUDA is not available"):
        load_model("tiny", device="cuda")


def _prefs(tmp_path) -> str:
    path = tmp_path / "prefs.jsonl"
    rows = [{"user_id": "u", "prompt": f"Q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_personalize_and_serve_pass_device_and_dtype(calls, tmp_path) -> None:
    assert main(["personalize", "--model", "tiny", "--prefs", _prefs(tmp_path), "--device", "cpu",
                 "--dtype", "bfloat16", "--max-new-tokens", "2", "Hi?"]) == 0  # fmt: skip
    assert calls[-1] == {"spec": "tiny", "dtype": "bfloat16", "device": "cpu"}
    from fspo.data.runs import resolve_model
    from fspo.serve.command import load_engine

    load_engine(resolve_model("tiny"), cache_users=1, device="mps", dtype="fp16")
    assert calls[-1] == {"spec": "tiny", "dtype": "fp16", "device": "mps"}


def test_engine_tensors_follow_the_model(calls) -> None:
    from fspo.data.runs import resolve_model
    from fspo.data.schema import PreferenceRecord
    from fspo.llm.base import GenerationParams
    from fspo.serve.personalize import Engine

    engine = Engine.load(resolve_model("tiny"), device="cpu")
    assert engine.device == engine.model.device
    shots = [PreferenceRecord("u", "Q?", "yes", "no")]
    out = engine.generate("u", shots, "Why?", GenerationParams(max_new_tokens=2))
    assert out.completion_tokens <= 2


def test_study_eval_and_synth_pass_device_and_dtype(calls, monkeypatch, tmp_path) -> None:
    from fspo.serve.study.app import load_engines

    class Study:
        model = "tiny"
        baseline_model = "tiny"

    load_engines(Study(), device="cpu", dtype="bf16")
    assert calls[-1] == {"spec": "tiny", "dtype": "bf16", "device": "cpu"}

    from fspo.eval.generate import ModelPool

    ModelPool(dtype="bf16", seed=0, device="cpu").get("tiny")
    assert calls[-1] == {"spec": "tiny", "dtype": "bf16", "device": "cpu"}

    import fspo.eval.generate as generate
    from fspo.eval.runner import run_eval

    made = []

    class Stop(Exception):
        pass

    def pool(**kwargs):
        made.append(kwargs)
        raise Stop

    monkeypatch.setattr(generate, "ModelPool", pool)
    cfg = EvalConfig(model="tiny", methods=["base"], base_model="tiny", users=1, queries=1, device="cpu",
                     dtype="bf16", out=str(tmp_path / "eval"), progress=False)  # fmt: skip
    with pytest.raises(Stop):
        run_eval(cfg)
    assert made == [{"dtype": "bf16", "seed": 0, "device": "cpu"}]

    from fspo.synth.command import make_backends

    gens, judge = make_backends(SynthConfig(out=str(tmp_path / "s"), models=["tiny"], device="cpu", dtype="fp16"))
    assert calls[-1] == {"spec": "tiny", "dtype": "fp16", "device": "cpu"} and len(gens) == 1 and judge is None


@NO_CUDA
@pytest.mark.parametrize("command", ["personalize", "serve", "eval", "synth"])
def test_device_cuda_without_cuda_is_one_line_exit_2(command, tmp_path, capsys) -> None:
    argv = {
        "personalize": ["personalize", "--model", "tiny", "--prefs", _prefs(tmp_path), "Hi?"],
        "serve": ["serve", "--model", "tiny", "--port", "0", "--db", str(tmp_path / "s.sqlite"), "--api-key", "k"],
        "eval": ["eval", "--model", "tiny", "--base-model", "tiny", "--methods", "base", "--users", "1",
                 "--queries", "1", "--out", str(tmp_path / "e"), "--progress", "false"],
        "synth": ["synth", "--out", str(tmp_path / "y"), "--domain", "elix", "--model", "tiny", "--users", "2",
                  "--questions", "2", "--quiet"],
    }[command]  # fmt: skip
    assert main(argv + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"fspo {command}: error:") and "--device cuda: CUDA is not available" in err


@NO_CUDA
def test_study_init_and_serve_device_cuda_without_cuda(tmp_path, capsys) -> None:
    import yaml

    config = yaml.safe_load(shipped_path("examples/study.yaml").read_text()) | {
        "model": "tiny",
        "baseline_model": "tiny",
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    db = str(tmp_path / "s.sqlite")
    assert main(["study", "init", "--config", str(path), "--db", db, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda: CUDA is not available" in err, err
    assert main(["study", "init", "--config", str(path), "--db", db, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["study", "serve", "--db", db, "--port", "0", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda: CUDA is not available" in err, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_on_cuda_the_engine_streams_and_caches_and_the_backend_generates(dtype) -> None:
    from fspo.data.runs import resolve_model
    from fspo.data.schema import PreferenceRecord
    from fspo.llm.base import GenerationParams
    from fspo.llm.local import LocalBackend
    from fspo.serve.personalize import Engine

    engine = Engine.load(resolve_model("tiny"), device="cuda", dtype=dtype)
    assert engine.device.type == "cuda" and engine.model.dtype == registry.resolve_dtype(dtype)
    shots = [PreferenceRecord("u", f"Q{i}?", f"yes {i}", f"no {i}") for i in range(3)]
    params = GenerationParams(max_new_tokens=8, temperature=1.0, seed=1)
    cold = engine.generate("u", shots, "Why?", params)
    items = list(engine.stream("u", shots, "Why?", params))
    assert items[-1].cached_tokens > 0 and "".join(items[:-1]) == items[-1].answer
    if dtype == "float32":
        assert items[-1].answer == cold.answer
    backend = LocalBackend.from_spec("tiny", device="cuda", dtype=dtype, batch_size=2)
    assert len(backend.generate(["a", "b c", "d"], GenerationParams(max_new_tokens=3))) == 3
