"""More input shapes (issue 17): CSV, folders of Parquet shards, prefs.parquet in a folder, hf://."""

from __future__ import annotations

import csv

import pytest

from fspo.cli import main
from fspo.data.io import load_data
from fspo.errors import DataError, FspoError

ROWS = [
    {"user_id": f"u{u}", "prompt": f"Question {q}?", "chosen": f"Good {u}{q}.", "rejected": f"Bad {u}{q}."}
    for u in range(2)
    for q in range(3)
]


def test_csv_with_a_header(tmp_path):
    path = tmp_path / "prefs.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["user_id", "prompt", "chosen", "rejected", "split"])
        w.writeheader()
        w.writerows([r | {"split": "train"} for r in ROWS])
    data = load_data(tmp_path)  # a folder holding prefs.csv
    assert [(r.user_id, r.prompt, r.chosen, r.rejected) for r in data.prefs] == [tuple(r.values()) for r in ROWS]
    path.write_text("user_id,prompt,chosen,rejected\nu1,q,a\n")  # chosen present, rejected missing
    with pytest.raises(DataError, match=r"prefs.csv:2: rejected"):
        load_data(path)


def test_folder_of_parquet_shards_takes_split_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:4]), tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[4:]), tmp_path / "ds" / "data" / "validation-00000-of-00001.parquet")
    data = load_data(tmp_path / "ds")
    assert [r.split for r in data.prefs] == ["train"] * 4 + ["validation"] * 2
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "prefs.parquet")  # a folder holding prefs.parquet
    assert len(load_data(tmp_path).prefs) == len(ROWS)


def test_hub_names_fail_in_one_line_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FspoError, match="hf://someone/prefs: cannot load from the Hugging Face Hub"):
        load_data("hf://someone/prefs")
    assert main(["validate", str(tmp_path / "missing.jsonl")]) == 2
    out = tmp_path / "x.jsonl"
    assert main(["export", "hf://someone/prefs", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Hugging Face Hub" in err[0] and not out.exists()
