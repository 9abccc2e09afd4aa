"""Method rows: names, model assignment, and what a run folder says about its reference."""

from __future__ import annotations

import json

import pytest

from fspo.errors import FspoError
from fspo.eval.methods import METHODS, assign_models, layout_warnings, model_info, parse_methods


def test_paper_rows_are_all_there():
    assert list(METHODS) == ["base", "fewshot", "prefft", "pooled", "fspo-dpo", "fspo-ipo", "fspo-rat", "oracle"]
    assert METHODS["fspo-rat"].layout == "rat" and METHODS["pooled"].layout == "zeroshot"


def test_parse_methods_errors():
    assert parse_methods("base, fewshot") == ["base", "fewshot"]
    with pytest.raises(FspoError, match="unknown method"):
        parse_methods("base,magic")
    with pytest.raises(FspoError, match="duplicate"):
        parse_methods("base,base")


def fake_run(path, stages, loss="sft+ipo", layout="fspo", ref=None):
    path.mkdir(parents=True)
    cfg = {"model": {"name": "smollm2", "ref": ref}, "loss": {"name": loss, "reduction": "sum"}}
    meta = {"config": cfg, "layout": layout, "n_shots": 2, "stages": stages, "base_model": "smollm2"}
    meta["heldout_users"] = ["u8", "u9"]
    (path / "fspo_run.json").write_text(json.dumps(meta))
    return str(path)


def test_model_info_reference(tmp_path):
    two = fake_run(tmp_path / "two", {"sft": "/elsewhere/sft/final", "ipo": "/elsewhere/ipo/final"})
    (tmp_path / "two" / "sft" / "final").mkdir(parents=True)
    info = model_info(two)
    assert info.reference == str(tmp_path / "two" / "sft" / "final")  # relocated run folder
    assert info.reduction == "sum" and info.n_shots == 2 and info.heldout_users == ("u8", "u9")
    one = model_info(fake_run(tmp_path / "one", {"ipo": "x"}, loss="ipo"))
    assert one.reference == "smollm2"
    assert model_info("tiny").reference is None


def test_assign_models(tmp_path):
    run = fake_run(tmp_path / "r", {"ipo": "x"}, loss="ipo", layout="oracle")
    got = assign_models(["base", "fewshot", "fspo-ipo", "prefft"], "tiny", run, {"prefft": "tiny"})
    assert got["base"].spec == "tiny" and got["fewshot"].spec == "tiny"
    assert got["fspo-ipo"].spec == run and got["prefft"].spec == "tiny"
    assert layout_warnings(got) == [f"fspo-ipo: model {run} was trained with layout 'oracle', evaluated with 'fspo'"]
    with pytest.raises(FspoError, match="needs a trained model"):
        assign_models(["fspo-ipo"], "tiny", None, {})
    with pytest.raises(FspoError, match="unknown methods"):
        assign_models(["base"], "tiny", None, {"nope": "x"})
