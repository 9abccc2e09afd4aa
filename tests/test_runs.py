"""The run record: one writer (train), one reader (resolve_model) for eval, serve and study."""

from __future__ import annotations

import json
import shutil

import pytest

from fspo.data.runs import DEFAULT_MAX_LENGTH, DEFAULT_SHOTS, RUN_FILE, RunRecord, read_record, resolve_model
from fspo.errors import FspoError


def make_run(root, **kw):
    """A two-stage run folder as the trainer lays it out: sft/final, ipo/final, final/, records."""
    for d in ("sft/final", "ipo/final", "final"):
        (root / d).mkdir(parents=True)
        (root / d / "config.json").write_text("{}")
    record = RunRecord(
        base_model="smollm2",
        stages={"sft": "sft/final", "ipo": "ipo/final"},
        reference="sft/final",
        heldout_users=("u8", "u9"),
        **kw,
    )
    record.write(root)
    record.relocated("final").write(root / "final")
    return record


def test_run_folder_and_final_folder_resolve_the_same(tmp_path):
    make_run(tmp_path / "run", layout="rat", n_shots=8, max_length=700, reduction="sum")
    by_run = resolve_model(str(tmp_path / "run"))
    by_final = resolve_model(str(tmp_path / "run" / "final"))
    for got in (by_run, by_final):
        assert got.spec == str(tmp_path / "run" / "final")
        assert (got.layout, got.n_shots, got.max_length, got.reduction) == ("rat", 8, 700, "sum")
        assert got.reference == str((tmp_path / "run" / "sft" / "final").resolve())
        assert got.heldout_users == ("u8", "u9") and got.trained


def test_final_copied_away_keeps_its_layout(tmp_path):
    make_run(tmp_path / "run", layout="rat", n_shots=8)
    shutil.copytree(tmp_path / "run" / "final", tmp_path / "moved")
    got = resolve_model(str(tmp_path / "moved"))
    assert (got.spec, got.layout, got.n_shots) == (str(tmp_path / "moved"), "rat", 8)
    assert got.reference == "../sft/final"  # not resolvable away from its run: said as recorded


def test_presets_and_plain_folders_get_the_defaults(tmp_path):
    (tmp_path / "plain").mkdir()
    for spec in ("tiny", str(tmp_path / "plain")):
        got = resolve_model(spec)
        assert (got.layout, got.n_shots, got.max_length, got.trained) == (
            "fspo",
            DEFAULT_SHOTS,
            DEFAULT_MAX_LENGTH,
            False,
        )
        assert got.reference is None
    with pytest.raises(FspoError, match="not a run folder"):
        resolve_model(str(tmp_path / "missing"))
    assert resolve_model("org/hub-model", must_exist=False).spec == "org/hub-model"


def test_overrides_and_serving_checks(tmp_path):
    make_run(tmp_path / "run", layout="oracle")
    got = resolve_model(str(tmp_path / "run"))
    with pytest.raises(FspoError, match="oracle"):
        got.for_serving()
    assert got.with_prompting("fspo", 2).for_serving().n_shots == 2
    with pytest.raises(FspoError, match="unknown prompt layout"):
        got.with_prompting("fsop")
    with pytest.raises(FspoError, match="shots"):
        got.with_prompting(n_shots=-1)


def test_unfinished_run_and_bad_records(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    RunRecord(base_model="tiny").write(run)
    with pytest.raises(FspoError, match="no final/"):
        resolve_model(str(run))
    (run / RUN_FILE).write_text("{not json")
    with pytest.raises(FspoError, match=RUN_FILE):
        read_record(run)
    for bad, field in (
        ({"layout": "fspo"}, "base_model"),
        ({"base_model": "tiny", "layout": "magic"}, "layout"),
        ({"base_model": "tiny", "n_shots": -1}, "n_shots"),
        ({"base_model": "tiny", "max_length": "long"}, "max_length"),
        ({"base_model": "tiny", "heldout_users": "u1"}, "heldout_users"),
        ({"base_model": "tiny", "selected_on": [1]}, "selected_on"),
        ([1, 2], "object"),
    ):
        (run / RUN_FILE).write_text(json.dumps(bad))
        with pytest.raises(FspoError, match=field):
            read_record(run)


def test_record_round_trips():
    rec = RunRecord(
        base_model="tiny", layout="prefonly", n_shots=3, heldout_users=("a",), selected_on=("b",), metrics={"x": 1.0}
    )
    assert RunRecord.from_json(rec.to_json(), "mem") == rec
