import json
from pathlib import Path

import pytest

from fspo.cli import main
from fspo.config import load_config
from fspo.data.episodes import Episode
from fspo.data.io import load_data, write_jsonl
from fspo.data.prompts import DESCRIPTION_HEADER
from fspo.data.rat_contrast import rejected_description, shared_descriptions
from fspo.data.schema import PreferenceRecord, UserProfile
from fspo.data.truncation import EpisodeTokenizer
from fspo.errors import FspoError
from fspo.train.config import TrainConfig
from fspo.train.data import prepare_training_data
from fspo.train.trainer import train

POS = "This user likes reviews that are enthusiastic and positive."
NEG = "This user likes reviews that are critical and negative."


def _user(uid, sentiment, description, split="train"):
    return UserProfile(uid, description, {"sentiment": sentiment}, split)


def _pair(uid, i, chosen_sentiment, split="train", meta_key="rejected_steer"):
    other = "negative" if chosen_sentiment == "positive" else "positive"
    return PreferenceRecord(
        uid,
        f"Write a review of item {i}.",
        f"A {chosen_sentiment} review of item {i}.",
        f"A {other} review of item {i}.",
        split,
        {meta_key: {"sentiment": other}},
    )


def test_only_descriptions_shared_by_every_user_with_the_attributes_are_used():
    users = [
        _user("a", "positive", POS),
        _user("b", "positive", POS + "  "),  # the same text
        _user("c", "negative", NEG),
        _user("d", "negative", "This user, a retired chef from Lyon, dislikes everything."),  # a user's own words
    ]
    table = shared_descriptions(users)
    assert table == {(("sentiment", "positive"),): POS}
    assert rejected_description(_pair("c", 0, "negative"), table) == POS
    assert rejected_description(_pair("a", 0, "positive"), table) is None  # negatives disagree: none
    assert rejected_description(PreferenceRecord("a", "q", "x", "y"), table) is None  # no attributes recorded
    assert rejected_description(_pair("c", 0, "negative", meta_key="rejected_attributes"), table) == POS


def test_the_rejected_completion_carries_the_contrasting_description_and_the_loss_sees_it(tiny):
    _, tok = tiny
    users = {"a": POS, "c": NEG}
    table = shared_descriptions([_user("a", "positive", POS), _user("c", "negative", NEG)])
    query = _pair("c", 1, "negative")
    shots = (_pair("c", 0, "negative"),)
    plain = EpisodeTokenizer(tok, 512, "rat", False, users).render(shots, query)
    contrast = EpisodeTokenizer(tok, 512, "rat", False, users, table).render(shots, query)
    assert plain.prompt == contrast.prompt and plain.chosen == contrast.chosen
    assert plain.rejected.startswith(DESCRIPTION_HEADER + NEG)
    assert contrast.chosen.startswith(DESCRIPTION_HEADER + NEG) and contrast.rejected.startswith(
        DESCRIPTION_HEADER + POS
    )
    # the preference loss scores what follows the completions' common start: with the gold
    # description on both sides that is the answer alone, with the contrast the description too
    ep = Episode("c", shots, query)
    plain_view = EpisodeTokenizer(tok, 512, "rat", False, users).tokenize(ep).preference_view()
    contrast_view = EpisodeTokenizer(tok, 512, "rat", False, users, table).tokenize(ep).preference_view()
    assert "critical" not in tok.decode(plain_view.chosen_ids)
    assert "critical" in tok.decode(contrast_view.chosen_ids)
    assert "enthusiastic" in tok.decode(contrast_view.rejected_ids)
    # other layouts never write a description: the table is ignored
    fspo = EpisodeTokenizer(tok, 512, "fspo", False, users, table).render(shots, query)
    assert DESCRIPTION_HEADER not in fspo.chosen + fspo.rejected


def _dataset(root: Path, heldout_description: str = NEG) -> Path:
    """Train users of both sentiments; one held-out user whose own description differs."""
    users = [_user(f"p{i}", "positive", POS) for i in range(3)] + [_user(f"n{i}", "negative", NEG) for i in range(3)]
    users.append(_user("h0", "negative", heldout_description, split="test"))
    prefs = [
        _pair(u.user_id, i, u.attributes["sentiment"], split=u.split)
        for u in users
        for i in range(4)  # noqa: B023
    ]
    write_jsonl(root / "users.jsonl", users)
    write_jsonl(root / "prefs.jsonl", prefs)
    return root


def _data_cfg(path: Path, **extra):
    cfg = load_config(TrainConfig, None, {"data.path": str(path), "data.layout": "rat", "data.shots": 2, **extra})
    return cfg.data


def test_training_pairs_get_contrast_and_held_out_users_stay_out(tiny, tmp_path):
    _, tok = tiny
    path = _dataset(tmp_path / "d", heldout_description="HELD-OUT USER'S OWN WORDS about negative reviews.")
    prepared = prepare_training_data(_data_cfg(path, **{"data.rat_contrast": True}), tok, seed=0)
    assert any(n.startswith("rat_contrast: 24 of 24 training pairs") for n in prepared.notes)
    texts = [tok.decode(p.prompt_ids + p.chosen_ids) + tok.decode(p.rejected_ids) for p in prepared.train]
    assert all("HELD-OUT" not in t for t in texts)
    assert all(POS in t and NEG in t for t in texts)
    # held-out reward accuracy during training keeps the gold description on both sides
    for p in prepared.eval:
        assert tok.decode(p.chosen_ids).split("\n")[1] == tok.decode(p.rejected_ids).split("\n")[1]
    # the held-out user's description is not read: had it been, the negatives would disagree
    table = shared_descriptions(u for u in load_data(path).users.values() if u.split == "train")
    assert table[(("sentiment", "negative"),)] == NEG


def test_contrast_needs_rat_and_recorded_attributes(tiny, tmp_path):
    _, tok = tiny
    with pytest.raises(FspoError, match=r"^data\.rat_contrast: needs the rat layout \(got layout .fspo.\)"):
        _data_cfg(tmp_path, **{"data.layout": "fspo", "data.rat_contrast": True})
    path = _dataset(tmp_path / "d")
    rows = [json.loads(x) for x in (path / "prefs.jsonl").read_text().splitlines()]
    for r in rows:
        r["meta"] = {}
    (path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(FspoError, match="data.rat_contrast: no training pair has a contrasting description"):
        prepare_training_data(_data_cfg(path, **{"data.rat_contrast": True}), tok, seed=0)


def test_cli_rejects_contrast_without_rat_in_one_line(tmp_path, capsys):
    rc = main(
        ["train", "--model", "tiny", "--data", "examples/reviews", "data.rat_contrast=true", "--out", str(tmp_path)]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.rat_contrast" in err


def test_rat_contrast_trains_on_the_bundled_examples(tmp_path):
    cfg = load_config(
        TrainConfig,
        None,
        {
            "model.name": "tiny",
            "data.path": "examples/reviews",
            "data.layout": "rat",
            "data.rat_contrast": True,
            "data.shots": 2,
            "data.max_length": 512,
            "data.eval_episodes": 0,
            "loss.name": "ipo",
            "optim.steps": 1,
            "progress": False,
            "out": str(tmp_path / "run"),
        },
    )
    out = train(cfg)
    assert (out / "final" / "model.safetensors").is_file()
    record = json.loads((out / "fspo_run.json").read_text())
    assert record["config"]["data"]["rat_contrast"] is True
