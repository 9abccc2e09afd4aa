"""The whole synth pipeline with the scripted backend: all presets, splits, determinism, labels, errors."""

from __future__ import annotations

import json

import pytest

from fspo.cli import main
from fspo.data.attributes import attribute_preference, measure
from fspo.data.io import load_data, validate_file
from fspo.llm.pairwise import length_rule, parse_verdict
from fspo.synth.judge import attribute_outcome, binary_entropy


def synth(tmp_path, *extra, name="out"):
    out = tmp_path / name
    rc = main(["synth", "--out", str(out), "--quiet", "--no-plots", *extra])
    assert rc == 0
    return out


@pytest.mark.parametrize("domain", ["reviews", "elix", "roleplay"])
def test_presets_run_and_validate(tmp_path, domain):
    args = ["--domain", domain, "--users", "6", "--questions", "5", "--backend", "scripted", "--no-embed"]
    out = synth(tmp_path, *args)
    assert validate_file(out / "prefs.jsonl") == [] and validate_file(out / "users.jsonl") == []
    data = load_data(out)  # also checks that held-out users have no train rows
    held = {u for u, p in data.users.items() if p.split == "test"}
    assert held and all(r.split == "test" for r in data.prefs if r.user_id in held)
    assert all(r.split == "train" for r in data.prefs if r.user_id not in held)
    assert sorted(data.users) == [f"u{i:03d}" for i in range(6)]
    diag = json.loads((out / "diagnostics" / "diagnostics.json").read_text())
    assert diag["counts"]["prefs_written"] == len(data.prefs)
    assert (out / "diagnostics" / "report.md").exists()
    for r in data.prefs:
        assert {"generator", "judge", "consistent", "chosen_steer", "rejected_steer"} <= set(r.meta)


def test_reviews_templates_are_exact(tmp_path):
    out = synth(tmp_path, "--domain", "reviews", "--users", "8", "--questions", "12", "--backend", "none")
    data = load_data(out)
    diag = json.loads((out / "diagnostics" / "diagnostics.json").read_text())
    assert diag["similarity"]["mean"] is not None and 0 < diag["similarity"]["mean"] < 1
    style = [r for r in data.prefs if r.meta["kind"] == "style"]
    assert len(style) == 8 * 12
    for r in style:
        attrs = data.users[r.user_id].attributes
        assert set(attrs) == {"sentiment", "length", "perspective"}
        assert attribute_preference(attrs, r.chosen, r.rejected) == 1
        assert r.meta["chosen_steer"] == attrs  # matched pairs: chosen is the user's own combination
        assert any(r.meta["chosen_steer"][a] != r.meta["rejected_steer"][a] for a in attrs)
        for side in ("chosen", "rejected"):
            m = measure(getattr(r, side))
            steer = r.meta[f"{side}_steer"]
            assert all(m.value(a) == v for a, v in steer.items())
            if steer["length"] == "concise":
                assert m.words <= 20
            else:
                assert 32 <= m.words <= 50


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    args = ["--domain", "roleplay", "--users", "4", "--questions", "4", "--backend", "scripted", "--no-embed"]
    a, b = synth(tmp_path, *args, name="a"), synth(tmp_path, *args, name="b")
    c = synth(tmp_path, *args, "--seed", "1", name="c")
    for f in ("prefs.jsonl", "users.jsonl", "diagnostics/diagnostics.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    assert (a / "users.jsonl").read_bytes() != (c / "users.jsonl").read_bytes()


def test_refinement_lowers_entropy_and_appends_facts(tmp_path):
    out = synth(
        tmp_path, "--domain", "roleplay", "--users", "5", "--questions", "6", "--backend", "scripted", "--no-embed"
    )
    d = json.loads((out / "diagnostics" / "diagnostics.json").read_text())
    assert d["counts"]["refine_facts_added"] > 0
    assert d["entropy"]["mean_after"] < d["entropy"]["mean_before"]
    assert d["order_consistency"]["after"] >= d["order_consistency"]["before"]
    users = load_data(out).users
    assert any("They value" in u.description for u in users.values())
    no = synth(
        tmp_path,
        "--domain",
        "roleplay",
        "--users",
        "5",
        "--questions",
        "6",
        "--backend",
        "scripted",
        "--no-embed",
        "--no-refine",
        name="norefine",
    )
    assert json.loads((no / "diagnostics" / "diagnostics.json").read_text())["counts"]["refine_facts_added"] == 0


def test_logprob_judge_and_question_split(tmp_path, monkeypatch):
    from fspo.llm import scripted

    orig = scripted.ScriptedBackend.__init__
    monkeypatch.setattr(scripted.ScriptedBackend, "__init__", lambda self, **kw: orig(self, **{**kw, "logprobs": True}))
    out = synth(
        tmp_path,
        "--domain",
        "elix",
        "--users",
        "4",
        "--questions",
        "6",
        "--backend",
        "scripted",
        "--no-embed",
        "--heldout-questions",
        "0.5",
    )
    data = load_data(out)
    assert all(r.meta["judge"].endswith(":logprob") for r in data.prefs)
    train_q = {r.prompt for r in data.prefs if r.split == "train"}
    test_q_train_users = {r.prompt for r in data.prefs if r.split == "test" and data.users[r.user_id].split == "train"}
    assert not train_q & test_q_train_users


def test_user_defined_domain_and_question_file(tmp_path):
    qfile = tmp_path / "qs.txt"
    qfile.write_text("How do I brew tea?\nHow do I brew tea ?\nWhat is a good first bike?\nHow can I sleep better?\n")
    dom = tmp_path / "mine.yaml"
    dom.write_text(
        "name: mine\naxes:\n  sentiment: {values: [positive, negative]}\n"
        "persona: {core: 'Likes {sentiment} answers.'}\n"
        "questions: {source: file, file: qs.txt}\n"
        'responses:\n  source: steered\n  steer_axes: [sentiment]\n  prompt: "Question: {question}\\nSteering:\\n{steering}"\n'
        "labeler: attribute\n"
    )
    out = synth(
        tmp_path, "--domain", str(dom), "--users", "2", "--questions", "3", "--backend", "scripted", "--no-embed"
    )
    data = load_data(out)
    assert len({r.prompt for r in data.prefs}) == 3  # the near-duplicate tea question was dropped
    too_many = [
        "synth",
        "--domain",
        str(dom),
        "--users",
        "2",
        "--questions",
        "4",
        "--backend",
        "scripted",
        "--out",
        str(tmp_path / "x"),
        "--quiet",
    ]
    assert main(too_many) == 2  # only 3 distinct questions


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "name: x\naxes: {a: {values: [one]}}\nquestions: {source: list, items: [q]}\nresponses: {source: views}\n",
            "axes.a.values: needs at least two",
        ),
        (
            "name: x\naxes: {a: {values: [p, q]}}\nquestions: {source: web}\nresponses: {source: views}\n",
            "questions.source: must be one of",
        ),
        (
            "name: x\naxes: {a: {values: [p, q]}}\nquestions: {source: list, items: [q]}\nresponses: {source: views}\n"
            "labeler: vibes\n",
            "labeler: must be one of",
        ),
        ("name: [unclosed\n", "<yaml>"),
    ],
)
def test_malformed_domain_is_one_line(tmp_path, capsys, yaml_text, message):
    dom = tmp_path / "bad.yaml"
    dom.write_text(yaml_text)
    rc = main(["synth", "--domain", str(dom), "--backend", "scripted", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(dom) in err[0] and message in err[0]


def test_too_few_questions_and_missing_llm(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                "--domain",
                "elix",
                "--questions",
                "500",
                "--backend",
                "scripted",
                "--out",
                str(tmp_path / "a"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "only 30 distinct questions available, 500 requested" in capsys.readouterr().err
    assert main(["synth", "--domain", "roleplay", "--backend", "none", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "needs an LLM" in capsys.readouterr().err


def test_verdict_parsing_is_strict():
    assert parse_verdict("Reasoning here.\nVerdict: A") == "A"
    assert parse_verdict("**Verdict: B**") == "B"
    assert parse_verdict("verdict: b.") == "B"
    for bad in ("A", "Verdict: A\nmore text", "Verdict: A or B", "I pick Response A", "", "Verdict: C"):
        assert parse_verdict(bad) is None, bad
    assert parse_verdict("Verdict: TIE") == "TIE" and parse_verdict("Verdict: TIE", allow_tie=False) is None


def test_length_rule_and_entropy():
    assert "Ignore the length" in length_rule("Loves spicy food.")
    assert "mentions length" in length_rule("Prefers concise answers.")
    assert binary_entropy(0.5) == pytest.approx(0.6931, abs=1e-4) and binary_entropy(1.0) == 0.0
    o = attribute_outcome({"sentiment": "positive"}, "I loved it, wonderful.", "I hated it, awful.")
    assert o.label == 1 and o.consistent and o.entropy == 0.0


def test_generated_questions_and_dedupe(tmp_path):
    from fspo.synth.questions import dedupe, parse_numbered

    assert dedupe(["Why is the sky blue?", "why is the sky blue", "Why is the sky so blue?", "How do bees fly?"]) == [
        "Why is the sky blue?",
        "How do bees fly?",
    ]
    assert parse_numbered("Sure!\n1. How do I bake bread?\n2) What is a good bike?\n- Too short\n") == [
        "How do I bake bread?",
        "What is a good bike?",
    ]
    dom = tmp_path / "gen.yaml"
    dom.write_text(
        "name: gen\naxes:\n  mood: {values: [calm, lively]}\npersona: {core: 'A {mood} person.'}\n"
        "questions: {source: generate, topic: hobbies}\nresponses: {source: views, views: 3, prompt: "
        '"Question: {question}\\nFrom this view: {view}"}\nlabeler: judge\nrefine: {enabled: true, max_facts: 3}\n'
    )
    out = synth(
        tmp_path, "--domain", str(dom), "--users", "3", "--questions", "6", "--backend", "scripted", "--no-embed"
    )
    assert len({r.prompt for r in load_data(out).prefs}) >= 3
