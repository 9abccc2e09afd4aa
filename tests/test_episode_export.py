"""``fspo export --episodes``: rendered FSPO episodes as TRL rows, trained on by TRL's DPOTrainer."""

from __future__ import annotations

import json

import pytest

from fspo.cli import main
from fspo.data.io import load_data


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_episodes_jsonl_parquet_and_datasets_folder(dataset, tmp_path):
    args = ["export", str(dataset), "--episodes", "--shots", "2"]
    assert main([*args, "--out", str(tmp_path / "ep.jsonl")]) == 0
    assert main([*args, "--out", str(tmp_path / "ep.parquet")]) == 0
    assert main([*args, "--out", str(tmp_path / "ep_ds")]) == 0
    rows = _rows(tmp_path / "ep.jsonl")
    from datasets import Dataset, load_from_disk

    assert rows == Dataset.from_parquet(str(tmp_path / "ep.parquet")).to_list()
    assert rows == load_from_disk(str(tmp_path / "ep_ds")).to_list()
    data = load_data(str(dataset))
    by_user = {}
    for r in data.prefs:
        by_user.setdefault(r.user_id, []).append(r)
    held = {u for u in by_user if data.user_split(u) == "test"}
    assert rows and not {r["user_id"] for r in rows} & held  # held-out users never in the train export
    for row in rows:
        assert row["chosen"].startswith("## Preferred Response \n") and row["chosen"] != row["rejected"]
        mine = by_user[row["user_id"]]
        # the query and every shot question belong to this user: no other user's data in the context
        questions = [q.split("\n")[0] for q in row["prompt"].split("## Question \n")[1:]]
        assert len(questions) == row["n_shots"] + 1
        assert all(any(q == r.prompt.strip() for r in mine) for q in questions)
    assert main([*args, "--split", "test", "--out", str(tmp_path / "test.jsonl")]) == 0
    assert {r["user_id"] for r in _rows(tmp_path / "test.jsonl")} == held


def test_episodes_fit_the_token_budget_like_training(dataset, tmp_path):
    out = tmp_path / "fit.jsonl"
    args = ["export", str(dataset), "--episodes", "--shots", "3", "--model", "tiny", "--max-length", "300"]
    assert main([*args, "--out", str(out)]) == 0
    from fspo.models.registry import load_tokenizer

    tok = load_tokenizer("tiny")
    for row in _rows(out):
        n = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        completion = max(len(tok(row[k], add_special_tokens=False)["input_ids"]) for k in ("chosen", "rejected"))
        assert n + completion + 1 <= 300  # + EOS, as training counts it


def test_bad_episode_options_are_one_line_errors(dataset, tmp_path, capsys):
    for extra in (["--shots", "-1"], ["--layout", "magic"], ["--heldout-users", "1.0"], ["--split", "validation"]):
        assert main(["export", str(dataset), "--episodes", "--out", str(tmp_path / "x.jsonl"), *extra]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.slow
def test_trl_dpo_trainer_trains_two_steps_on_exported_episodes(dataset, tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from fspo.models.registry import load_model

    assert main(["export", str(dataset), "--episodes", "--shots", "2", "--out", str(tmp_path / "ep.jsonl")]) == 0
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in _rows(tmp_path / "ep.jsonl")]
    model, tok = load_model("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        loss_type="ipo",
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        dataset_num_proc=None,
    )
    ref = load_model("tiny")[0]  # the tiny model lives in memory only: TRL cannot reload it by name
    data = Dataset.from_list(rows[:16])
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not v.equal(before[k]) for k, v in model.state_dict().items())
