"""Method rows: names, model assignment, and what a run folder says about its reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from fspo.data.runs import RunRecord
from fspo.errors import FspoError
from fspo.eval.methods import METHODS, assign_models, layout_warnings, parse_methods


def test_paper_rows_are_all_there():
    assert list(METHODS) == ["base", "fewshot", "prefft", "pooled", "fspo-dpo", "fspo-ipo", "fspo-rat", "oracle"]
    assert METHODS["fspo-rat"].layout == "rat" and METHODS["pooled"].layout == "zeroshot"


def test_parse_methods_errors():
    assert parse_methods("base, fewshot") == ["base", "fewshot"]
    with pytest.raises(FspoError, match="unknown method"):
        parse_methods("base,magic")
    with pytest.raises(FspoError, match="duplicate"):
        parse_methods("base,base")


def fake_run(path, layout="fspo"):
    (path / "final").mkdir(parents=True)
    (path / "final" / "config.json").write_text("{}")
    RunRecord(base_model="smollm2", layout=layout, n_shots=2, reference="smollm2").write(path)
    return str(path)


def test_assign_models(tmp_path):
    run = fake_run(tmp_path / "r", layout="oracle")
    got = assign_models(["base", "fewshot", "fspo-ipo", "prefft"], "tiny", run, {"prefft": "tiny"})
    assert got["base"].spec == "tiny" and got["fewshot"].spec == "tiny"
    assert got["fspo-ipo"].spec == str(Path(run) / "final") and got["prefft"].spec == "tiny"
    final = Path(run) / "final"
    assert layout_warnings(got) == [f"fspo-ipo: model {final} was trained with layout 'oracle', evaluated with 'fspo'"]
    with pytest.raises(FspoError, match="needs a trained model"):
        assign_models(["fspo-ipo"], "tiny", None, {})
    with pytest.raises(FspoError, match="unknown methods"):
        assign_models(["base"], "tiny", None, {"nope": "x"})


def test_model_cache_identity_follows_the_weights_not_the_run_record(tmp_path):
    """A rerun of a finished fspo train rewrites final/fspo_run.json; the eval cache must still hit."""
    import os

    from fspo.eval.generate import model_fingerprint

    model = tmp_path / "final"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "fspo_run.json").write_text('{"config": 1}')
    before = model_fingerprint(str(model))
    (model / "fspo_run.json").write_text('{"config": 2}')
    os.utime(model / "fspo_run.json", ns=(1, 1))
    assert model_fingerprint(str(model)) == before
    (model / "model.safetensors").write_bytes(b"retrained")
    assert model_fingerprint(str(model)) != before
