import pytest
from conftest import make_records

from fspo.data.episodes import build_episodes
from fspo.data.splits import assign_splits, check_disjoint_users, split_questions, split_users, training_records
from fspo.errors import FspoError


def test_split_users_deterministic_and_disjoint():
    ids = [f"u{i}" for i in range(10)]
    train, held = split_users(ids, 0.3, seed=1)
    assert (train, held) == split_users(reversed(ids), 0.3, seed=1)
    assert len(held) == 3 and not set(train) & set(held) and set(train) | set(held) == set(ids)


def test_split_questions_never_straddles():
    recs = make_records(3, 6)
    train_q, held_q = split_questions([r.prompt for r in recs], 0.5, seed=0)
    assert not train_q & held_q and len(held_q) == 3
    marked = assign_splits(recs, heldout_questions=held_q)
    assert all((r.split == "test") == (r.prompt in held_q) for r in marked)


def test_heldout_users_never_in_training_episodes():
    recs = make_records(6, 5)
    _, held = split_users({r.user_id for r in recs}, 0.34, seed=0)
    marked = assign_splits(recs, heldout_users=held)
    train = training_records(marked, held)
    episodes, _ = build_episodes(train, n_shots=3, seed=0)
    seen = {e.query.user_id for e in episodes} | {s.user_id for e in episodes for s in e.shots}
    assert seen and not seen & set(held)
    with pytest.raises(FspoError, match="held-out users appear"):
        check_disjoint_users(marked, held)


def test_heldout_question_rows_never_reach_training(tmp_path, tiny):
    """Rows of training users marked split=test (held-out questions, the paper's setting) are neither
    shots nor queries of any training episode."""
    import json

    from fspo.train.config import DataConfig
    from fspo.train.data import prepare_training_data

    rows = [r for r in make_records(3, 8)]
    held_q = {"Question 2 for everyone?", "Question 5 for everyone?"}
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "prefs.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "user_id": r.user_id,
                    "prompt": r.prompt,
                    "chosen": r.chosen,
                    "rejected": r.rejected,
                    "split": "test" if r.prompt in held_q else "train",
                }  # fmt: skip
            )
            + "\n"
            for r in rows
        )
    )
    data = prepare_training_data(DataConfig(path=str(folder), shots=3, eval_episodes=0), tiny[1], seed=0)
    assert data.train
    for pair in data.train:
        text = tiny[1].decode(pair.prompt_ids + pair.chosen_ids)
        assert not any(q in text for q in held_q), text
