import json
import os
import subprocess
import sys

import pytest

from fspo.data.io import export_trl, load_data, read_preferences, validate_file, write_jsonl
from fspo.errors import DataError


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"user_id": "u1", "prompt": "q1", "chosen": "a", "rejected": "b"}


def test_validate_reports_every_problem(tmp_path):
    f = _write(tmp_path / "prefs.jsonl", [GOOD, "{not json", {"user_id": "u1", "prompt": "q"}, GOOD])
    problems = [str(p) for p in validate_file(f)]
    assert problems[0].startswith(f"{f}:2: <json>: invalid JSON")
    assert problems[1] == f"{f}:3: chosen: missing required field (or response_a/response_b/label)"
    assert len(problems) == 2


def test_validate_cli_exit_codes_and_no_traceback(tmp_path):
    bad = _write(tmp_path / "prefs.jsonl", [GOOD, {"user_id": "u1", "prompt": "q2", "chosen": "a"}])
    run = subprocess.run([sys.executable, "-m", "fspo.cli", "validate", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stdout.strip() == f"{bad}:2: rejected: missing required field"
    assert "Traceback" not in run.stderr
    good = _write(tmp_path / "ok.jsonl", [GOOD])
    assert (
        subprocess.run([sys.executable, "-m", "fspo.cli", "validate", str(good)], capture_output=True).returncode == 0
    )
    missing = subprocess.run(
        [sys.executable, "-m", "fspo.cli", "validate", str(tmp_path / "nope.jsonl")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stdout == f"{tmp_path / 'nope.jsonl'}: <file>: no such file or directory\n"


def test_validate_users_file(tmp_path):
    f = _write(tmp_path / "users.jsonl", [{"user_id": "u1"}, {"user_id": "u1", "description": "x"}])
    assert [str(p) for p in validate_file(f)] == [f"{f}:2: user_id: duplicate user 'u1'"]


def test_parquet_and_hf_datasets_folder(tmp_path):
    import datasets

    rows = [dict(GOOD, prompt=f"q{i}") for i in range(3)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    assert [r.prompt for r in read_preferences(tmp_path / "p.parquet")] == ["q0", "q1", "q2"]
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "hf"))
    recs = read_preferences(tmp_path / "hf")
    assert [r.split for r in recs] == ["train"] * 3 + ["test"] * 3


def test_pairwise_rows_convert_on_load(tmp_path):
    f = _write(
        tmp_path / "pairs.jsonl", [{"user_id": "u", "prompt": "q", "response_a": "A", "response_b": "B", "label": 1}]
    )
    (rec,) = read_preferences(f)
    assert (rec.chosen, rec.rejected) == ("B", "A")


def test_export_trl_roundtrip(tmp_path, records):
    n = export_trl(records, tmp_path / "trl.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "trl.jsonl").read_text().splitlines()]
    assert n == len(records) and set(rows[0]) == {"prompt", "chosen", "rejected", "user_id"}
    want = [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "user_id": r.user_id} for r in records]
    assert rows == want  # a chosen/rejected swap or a reordering fails here


def test_write_jsonl_is_atomic(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"a": 1}])

    def boom():
        yield {"a": 2}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(target, boom())
    assert target.read_text() == '{"a": 1}\n'  # the old file survives whole
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_load_data_checks_users(tmp_path, dataset):
    data = load_data(dataset)
    assert len(data.users) == 5 and data.user_split("u4") == "test"
    lines = (dataset / "prefs.jsonl").read_text().splitlines()
    row = json.loads(lines[-1])
    row["split"] = "train"  # a held-out user's row marked train: refuse, it would leak into training
    lines[-1] = json.dumps(row)
    (dataset / "prefs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"prefs.jsonl:{len(lines)}: split: user 'u4' is held out"):
        load_data(dataset)
    os.remove(dataset / "users.jsonl")
    assert len(load_data(dataset).prefs) == len(lines)
