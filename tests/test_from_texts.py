"""``fspo from-texts``: preference pairs from people's own writing, and the eval's voice score."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from fspo.cli import main
from fspo.data.io import load_data
from fspo.synth.from_texts import FromTextsConfig, read_texts, run_from_texts

EXAMPLE = "examples/voices/texts.jsonl"
# Each person's one prompt nobody else answered, and the shared prompt it paraphrases.
PARAPHRASES = {
    "What is your morning routine?": "How do you start your morning?",
    "Which book should I read on vacation?": "Recommend a book for a long flight.",
    "Is remote work productive?": "What do you think of remote work?",
    "What is your ideal Saturday?": "Describe your ideal weekend.",
    "How do you recover from a rough day?": "How do you deal with a bad day?",
    "Should I buy an electric vehicle?": "What is your take on electric cars?",
    "How can a beginner learn to cook well?": "How should I learn to cook?",
}


def _convert(out: Path, texts: str | Path = EXAMPLE, **kw):
    cfg = FromTextsConfig(
        texts=str(texts), out=str(out), similarity=kw.pop("similarity", "words"), progress=False, **kw
    )
    return run_from_texts(cfg)


def _pairs(folder: Path) -> set[tuple]:
    return {(r.user_id, r.prompt, r.chosen, r.rejected, r.split) for r in load_data(folder).prefs}


def _authors() -> dict[str, str]:
    return {t.text: t.person for t in read_texts(EXAMPLE)}


def test_example_set_ships_with_the_package(tmp_path, monkeypatch):
    from fspo.config import PACKAGE_DIR

    monkeypatch.chdir(tmp_path)
    assert len(read_texts(EXAMPLE)) == 70  # examples/voices works from any directory
    texts = read_texts(str(PACKAGE_DIR / "examples" / "voices" / "texts.jsonl"))
    persons = {t.person for t in texts}
    assert 6 <= len(persons) <= 8 and len(texts) == 70
    shared = [p for p in {t.prompt for t in texts} if sum(t.prompt == p for t in texts) == len(persons)]
    assert len(shared) == 9  # every person answered the same 9 prompts, plus one of their own


def test_example_set_converts_chosen_is_always_the_authors_own(tmp_path):
    out = tmp_path / "voices"
    conv = _convert(out)
    assert main(["validate", str(out)]) == 0
    data = load_data(out)
    authors, by_text = _authors(), {t.text: t for t in read_texts(EXAMPLE)}
    assert len(data.prefs) == 70 and set(data.users) == set(authors.values())
    for r in data.prefs:
        assert authors[r.chosen] == r.user_id  # never another person's text as someone's chosen
        assert authors[r.rejected] == r.meta["rejected_person"] != r.user_id
        assert by_text[r.chosen].prompt == r.prompt
        if r.prompt in PARAPHRASES:  # nobody else answered it: the most similar prompt's text
            assert r.meta["rejected"] == "similar_prompt"
            assert r.meta["rejected_prompt"] == by_text[r.rejected].prompt == PARAPHRASES[r.prompt]
        else:  # a shared prompt: another person's answer to the same prompt
            assert r.meta["rejected"] == "same_prompt" and by_text[r.rejected].prompt == r.prompt
    assert conv.stats["rejected"] == {"same_prompt": 63, "similar_prompt": 7}
    summary = json.loads((out / "from_texts.json").read_text())
    assert summary["pairs"] == 70 and summary["config"]["seed"] == 0
    # users: no descriptions (none given), measured attributes for the attribute judge
    assert all(u.description == "" and u.attributes for u in data.users.values())
    assert data.users["whitlock"].attributes["reading_level"] == "advanced"
    assert data.users["kiki"].attributes["sentiment"] == "positive"


@pytest.mark.slow
def test_similar_prompt_by_minilm_matches_the_paraphrase(tmp_path):
    conv = _convert(tmp_path / "v", similarity="embed")
    similar = [r for r in conv.records if r.meta["rejected"] == "similar_prompt"]
    assert len(similar) == 7 and all(r.meta["similarity"] == "embed" for r in similar)
    assert {r.prompt: r.meta["rejected_prompt"] for r in similar} == PARAPHRASES
    assert all(0.5 < r.meta["prompt_similarity"] <= 1.0 for r in similar)


def test_splits_by_person_keep_heldout_texts_out_of_training(tmp_path):
    out = tmp_path / "v"
    conv = _convert(out, heldout_persons=0.3, heldout_prompts=0.2, pairs_per_text=2, seed=3)
    data = load_data(out)
    authors = _authors()
    held = {u for u, p in data.users.items() if p.split == "test"}
    held_prompts = set(conv.stats["heldout_prompts"])
    assert len(held) == 2 and held == set(conv.stats["heldout_persons"]) and len(held_prompts) == 3
    by_text = {t.text: t for t in read_texts(EXAMPLE)}
    for r in data.prefs:
        expected = "test" if r.user_id in held or r.prompt in held_prompts else "train"
        assert r.split == expected
        if r.split == "train":  # nothing of a held-out person or prompt, on either side
            assert authors[r.chosen] not in held and authors[r.rejected] not in held
            assert by_text[r.rejected].prompt not in held_prompts
    # two pairs per text, each against a different person
    per_text: dict[str, set] = {}
    for r in data.prefs:
        per_text.setdefault(r.chosen, set()).add(r.meta["rejected_person"])
    assert all(len(v) == 2 for v in per_text.values())
    assert main(["validate", str(out)]) == 0


def test_training_episodes_show_only_the_persons_own_preferred_texts(tmp_path):
    from fspo.data.episodes import build_episodes
    from fspo.data.splits import heldout_user_ids, training_records

    out = tmp_path / "v"
    _convert(out, pairs_per_text=2)
    data = load_data(out)
    _, held = heldout_user_ids(data, 0.0, 0)
    episodes, _ = build_episodes(training_records(data.prefs, held), n_shots=4, seed=0)
    authors = _authors()
    assert episodes
    for ep in episodes:
        assert authors[ep.query.chosen] == ep.user_id and ep.user_id not in held
        for shot in ep.shots:
            assert shot.user_id == ep.user_id and authors[shot.chosen] == ep.user_id


def test_deterministic_and_independent_of_row_order(tmp_path):
    a, b, c, d = (tmp_path / x for x in "abcd")
    _convert(a)
    _convert(b)
    assert (a / "prefs.jsonl").read_bytes() == (b / "prefs.jsonl").read_bytes()
    assert (a / "users.jsonl").read_bytes() == (b / "users.jsonl").read_bytes()
    lines = Path(EXAMPLE).read_text().splitlines(keepends=True)
    random.Random(1).shuffle(lines)
    (tmp_path / "shuffled.jsonl").write_text("".join(lines))
    _convert(c, tmp_path / "shuffled.jsonl")
    assert _pairs(c) == _pairs(a)
    _convert(d, seed=1)
    assert _pairs(d) != _pairs(a)


def test_csv_parquet_user_id_and_descriptions(tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"person_id": t.person, "prompt": t.prompt, "text": t.text} for t in read_texts(EXAMPLE)]
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["person_id", "prompt", "text"])
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    _convert(tmp_path / "j")
    _convert(tmp_path / "c", tmp_path / "t.csv")
    _convert(tmp_path / "p", tmp_path / "t.parquet")
    assert _pairs(tmp_path / "c") == _pairs(tmp_path / "j") == _pairs(tmp_path / "p")
    # user_id as the person column; a description on some row becomes the user's description
    alt = [{"user_id": r["person_id"], "prompt": r["prompt"], "text": r["text"]} for r in rows]
    alt[0]["description"] = "Talks like a pirate."
    (tmp_path / "alt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alt))
    _convert(tmp_path / "u", tmp_path / "alt.jsonl")
    users = load_data(tmp_path / "u").users
    assert users[alt[0]["user_id"]].description == "Talks like a pirate."
    assert sum(bool(u.description) for u in users.values()) == 1


def test_persons_with_too_few_texts_are_skipped_and_counted(tmp_path, capsys):
    src = tmp_path / "t.jsonl"
    extra = {"person_id": "solo", "prompt": "How do you start your morning?", "text": "Slowly, with tea."}
    src.write_text(Path(EXAMPLE).read_text() + json.dumps(extra) + "\n")
    out = tmp_path / "v"
    assert main(["from-texts", "--texts", str(src), "--out", str(out), "--similarity", "words"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 persons with fewer than 2 texts: solo" in printed and "wrote 70 pairs" in printed
    assert "solo" not in load_data(out).users
    assert json.loads((out / "from_texts.json").read_text())["skipped_persons"] == ["solo"]
    # one person left: no contrast is possible, a one-line error and nothing written
    one = tmp_path / "one.jsonl"
    one.write_text("".join(line for line in Path(EXAMPLE).read_text().splitlines(True) if '"dana"' in line))
    assert main(["from-texts", "--texts", str(one), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 persons" in err[0] and not (tmp_path / "none").exists()


def test_rejected_base_answers_and_their_fallback(tmp_path):
    lines = [x for x in Path(EXAMPLE).read_text().splitlines(True) if '"dana"' in x or '"kiki"' in x]
    src = tmp_path / "t.jsonl"
    src.write_text("".join(lines))
    cfg = FromTextsConfig(
        texts=str(src),
        out=str(tmp_path / "b"),
        rejected="base",
        heldout_persons=0.0,
        similarity="words",
        progress=False,
    )
    conv = run_from_texts(cfg, base_answers=lambda prompts: [f"A plain answer to: {p}" for p in prompts])
    assert {r.meta["rejected"] for r in conv.records} == {"base"} and len(conv.records) == 20
    assert all(r.rejected == f"A plain answer to: {r.prompt}" for r in conv.records)
    # an empty base answer: another person's text instead, counted
    conv = run_from_texts(cfg, base_answers=lambda prompts: ["" for _ in prompts])
    assert conv.stats["rejected"]["base_fallback"] == 20 and "20 base answers were empty" in conv.notes[-1]
    assert {r.meta["rejected"] for r in conv.records} == {"same_prompt", "similar_prompt"}


def test_rejected_base_with_the_tiny_model(tmp_path):
    lines = [x for x in Path(EXAMPLE).read_text().splitlines(True) if '"dana"' in x or '"rose"' in x][:6]
    lines += [x for x in Path(EXAMPLE).read_text().splitlines(True) if '"rose"' in x][:3]
    src = tmp_path / "t.jsonl"
    src.write_text("".join(lines))
    out = tmp_path / "b"
    args = ["from-texts", "--texts", str(src), "--out", str(out), "--rejected", "base", "--base-model", "tiny"]
    assert main([*args, "--max-new-tokens", "8", "--heldout-persons", "0", "--device", "cpu", "--quiet"]) == 0
    prefs = load_data(out).prefs
    assert prefs and all(r.meta["rejected"] in ("base", "same_prompt", "similar_prompt") for r in prefs)
    assert any(r.meta.get("rejected_model") == "tiny" for r in prefs)


def test_help_lists_the_options():
    import subprocess
    import sys

    text = subprocess.run(
        [sys.executable, "-m", "fspo", "from-texts", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--texts", "--out", "--rejected", "--heldout-persons", "--heldout-prompts", "--min-texts", "--seed"):
        assert flag in text


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    for extra in (["--heldout-persons", "1.0"], ["--rejected", "nobody"], ["--min-texts", "0"], []):
        args = ["from-texts", "--out", str(tmp_path / "x")] + ([] if extra == [] else ["--texts", EXAMPLE])
        assert main([*args, *extra]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ bad inputs

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

GOOD = [json.dumps({"person_id": t.person, "prompt": t.prompt, "text": t.text}) for t in read_texts(EXAMPLE)][:20]
# (a bad line, the field its error names)
BAD_LINES = [
    (json.dumps({"prompt": "Q?", "text": "T."}), "person_id"),
    (json.dumps({"person_id": None, "prompt": "Q?", "text": "T."}), "person_id"),
    (json.dumps({"person_id": True, "prompt": "Q?", "text": "T."}), "person_id"),
    (json.dumps({"person_id": 1.5, "prompt": "Q?", "text": "T."}), "person_id"),
    (json.dumps({"person_id": "  ", "prompt": "Q?", "text": "T."}), "person_id"),
    (json.dumps({"person_id": "a\nb", "prompt": "Q?", "text": "T."}), "person_id"),
    (json.dumps({"person_id": "a", "text": "T."}), "prompt"),
    (json.dumps({"person_id": "a", "prompt": 3, "text": "T."}), "prompt"),
    (json.dumps({"person_id": "a", "prompt": " \t", "text": "T."}), "prompt"),
    (json.dumps({"person_id": "a", "prompt": "Q?"}), "text"),
    (json.dumps({"person_id": "a", "prompt": "Q?", "text": ["T."]}), "text"),
    (json.dumps({"person_id": "a", "prompt": "Q?", "text": "\u200b"}), "text"),
    ('{"person_id": "a", "prompt": "Q?", "text": "\\ud800"}', "text"),
    (json.dumps({"person_id": "a", "prompt": "Q?", "text": "T.", "description": 7}), "description"),
    (json.dumps(["a", "Q?", "T."]), "<row>"),
    ('{"person_id": "a", "prompt": "Q?", "text": "T."', "<json>"),
    ('{"person_id": "a", "person_id": "b", "prompt": "Q?", "text": "T."}', "person_id"),  # a key twice
]


_NOT_TEXT = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_BLANK = st.text(alphabet=" \t\n\r\u200b\u200d\ufeff\u2060", min_size=0, max_size=5)


@st.composite
def _generated_bad_line(draw):
    """A good row with one required field removed, of a wrong type, or blank (person_id: integers are
    valid ids, so only other types)."""
    row = {"person_id": "p", "prompt": "A question?", "text": "An answer."}
    field = draw(st.sampled_from(["person_id", "prompt", "text"]))
    how = draw(st.sampled_from(["missing", "type", "blank"]))
    if how == "missing":
        del row[field]
    elif how == "type":
        row[field] = draw(_NOT_TEXT)
    else:
        row[field] = draw(_BLANK)
    return json.dumps(row), field


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bad=st.one_of(st.sampled_from(BAD_LINES), _generated_bad_line()),
    at=st.integers(0, len(GOOD)),
    existing=st.booleans(),
)
def test_a_malformed_row_is_one_line_naming_file_line_and_field_and_nothing_is_written(bad, at, existing, capsys):
    line, fieldname = bad
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "texts.jsonl"
        src.write_text("\n".join([*GOOD[:at], line, *GOOD[at:]]) + "\n", encoding="utf-8")
        out = Path(tmp) / "out"
        if existing:  # an earlier dataset in the folder stays as it was
            shutil.copytree(Path(EXAMPLE).parent, out)
        before = sorted((p.name, p.read_bytes()) for p in out.iterdir()) if existing else None
        capsys.readouterr()
        assert main(["from-texts", "--texts", str(src), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"fspo from-texts: error: {src}:{at + 1}: {fieldname}: "), err[0]
        if existing:
            assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before
        else:
            assert not out.exists()


def test_empty_and_missing_inputs(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    for name, expect in (("empty.jsonl", "contains no texts"), ("missing.jsonl", "no such file")):
        assert main(["from-texts", "--texts", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0] and str(tmp_path / name) in err[0]
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- voice score


class _Q:
    def __init__(self, prompt, chosen, rejected):
        self.prompt, self.chosen, self.rejected = prompt, chosen, rejected


class _Ep:
    def __init__(self, user, prompt, chosen, rejected):
        self.user_id, self.query = user, _Q(prompt, chosen, rejected)


class _Gen:
    def __init__(self, answer):
        self.answer = answer


def _bag_of_words(texts, batch_size=32):
    """A stand-in for MiniLM: hashed word counts (crc32, 64 buckets), L2-normalized."""
    import zlib

    import torch

    vec = torch.full((len(texts), 64), 1e-6)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            vec[i, zlib.crc32(w.encode()) % 64] += 1.0
    return torch.nn.functional.normalize(vec, dim=-1)


def test_voice_scores_and_report_section(monkeypatch):
    import fspo.models.embeddings as emb
    from fspo.eval.report import _voice_lines
    from fspo.eval.voice import voice_scores

    monkeypatch.setattr(emb, "embed", _bag_of_words)
    eps = [
        _Ep("kiki", "Q1?", "so fun yay party", "dull formal text"),
        _Ep("kiki", "Q2?", "yay cats fun", "a careful analysis"),
        _Ep("dana", "Q3?", "ship it now", "a long poem"),
    ]
    gens = {
        "base": [_Gen("generic words here"), _Gen("generic words"), _Gen("generic")],
        "fspo-ipo": [_Gen("so fun yay"), _Gen("yay cats"), _Gen("ship it")],
    }
    v = voice_scores(eps, gens, "base", n_boot=200)
    base, fspo = v["methods"]["base"], v["methods"]["fspo-ipo"]
    assert "delta" not in base and fspo["mean"] > base["mean"] + 0.5
    assert fspo["delta"] == pytest.approx(fspo["mean"] - base["mean"])
    assert fspo["closer_than_baseline"] == 1.0 and fspo["delta_ci"][0] > 0
    assert set(fspo["per_user"]) == {"kiki", "dana"} and v["reference_rejected"] < 0.1
    assert v["samples"][0]["real"] == "so fun yay party"
    md = "\n".join(_voice_lines({"voice": v}))
    assert "## Voice" in md and "- real text: so fun yay party" in md and "| fspo-ipo |" in md

    def broken(texts, batch_size=32):
        from fspo.errors import FspoError

        raise FspoError("no MiniLM")

    monkeypatch.setattr(emb, "embed", broken)
    assert voice_scores(eps, gens, "base") is None


@pytest.mark.slow
def test_train_and_eval_on_converted_texts_report_the_voice_score(tmp_path):
    data = tmp_path / "voices"
    assert main(["from-texts", "--texts", EXAMPLE, "--out", str(data), "--similarity", "words", "--quiet"]) == 0
    run = tmp_path / "run"
    rc = main(
        ["train", "--model", "tiny", "--data", str(data), "--loss", "sft+ipo", "--shots", "2", "--steps", "2",
         "optim.sft_steps=1", "data.eval_episodes=0", "data.max_length=512", "--out", str(run), "--progress", "false"]
    )  # fmt: skip
    assert rc == 0
    out = tmp_path / "eval"
    rc = main(
        ["eval", "--data", str(data), "--model", str(run), "--methods", "base,fewshot,fspo-ipo", "--shots", "2",
         "--shots-curve", "0,2", "--queries", "2", "--max-new-tokens", "8", "--max-length", "512",
         "--n-boot", "100", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    res = json.loads((out / "eval.json").read_text())
    held = sorted(u for u, p in load_data(data).users.items() if p.split == "test")
    assert res["users"] == held
    assert res["reward_accuracy"]["fspo-ipo"]["splits"]["heldout_users"]["metric"] == "implicit_reward"
    voice = res["voice"]
    assert set(voice["methods"]) == {"base", "fewshot", "fspo-ipo"} and voice["baseline"] == "base"
    assert all(-1.0 <= m["mean"] <= 1.0 and m["n"] == 4 for m in voice["methods"].values())
    assert "delta" in voice["methods"]["fspo-ipo"] and "delta" not in voice["methods"]["base"]
    authors = _authors()
    for s in voice["samples"]:
        assert authors[s["real"]] == s["user_id"] and set(s["answers"]) == set(voice["methods"])
    report = (out / "report.md").read_text()
    assert "## Voice: answers vs the person's own text" in report and "- real text: " in report


def test_yaml_config_and_overrides(tmp_path):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"texts: {EXAMPLE}\nsimilarity: words\nheldout_persons: 0.3\nseed: 5\nprogress: false\n")
    out = tmp_path / "v"
    assert main(["from-texts", "--config", str(cfg), "--out", str(out), "seed=2"]) == 0
    summary = json.loads((out / "from_texts.json").read_text())
    assert summary["config"]["heldout_persons"] == 0.3 and summary["config"]["seed"] == 2
    assert len(summary["heldout_persons"]) == 2
