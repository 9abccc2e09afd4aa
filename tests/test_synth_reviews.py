"""The reviews domain's data (issue 13, section 4): three measurable axes, varied item-specific wording,
off-topic pairs, held-out users / combination / questions, and speed at 200 users x 24 questions."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import re
import sys
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from fspo.cli import main
from fspo.data.attributes import AXES, attribute_preference, matches, measure
from fspo.data.io import load_data, validate_file
from fspo.eval.acceptability import assess
from fspo.synth.config import SynthConfig
from fspo.synth.diversity import has_repeated_ngram, text_diversity
from fspo.synth.domain import load_domain
from fspo.synth.pipeline import run_synth
from fspo.synth.templates import item_info, templated_review

AXIS_NAMES = ("sentiment", "length", "perspective")
COMBOS = [dict(zip(AXIS_NAMES, c)) for c in itertools.product(*(AXES[a] for a in AXIS_NAMES))]


def synth(out: Path, users: int, questions: int, **kw) -> Path:
    cfg = SynthConfig(
        domain="reviews", users=users, questions=questions, out=out, embed=False, plots=False, progress=False, **kw
    )
    run_synth(cfg, llms=[])
    return out


@pytest.fixture(scope="module")
def data48(tmp_path_factory):
    out = synth(tmp_path_factory.mktemp("reviews") / "out", 48, 12, heldout_questions=0.25)
    assert validate_file(out / "prefs.jsonl") == [] and validate_file(out / "users.jsonl") == []
    return out, load_data(out)


def items_by_question() -> dict[str, dict]:
    domain = load_domain("reviews")
    return {domain.questions["template"].format(item=i["item"]): i for i in domain.questions["items"]}


def test_three_axes_eight_combinations_each_measured_as_steered(data48):
    _, data = data48
    assert sorted(tuple(u.attributes[a] for a in AXIS_NAMES) for u in data.users.values()) == sorted(
        tuple(c.values()) for c in COMBOS for _ in range(6)
    )  # 48 users: every combination 6 times
    style = [r for r in data.prefs if r.meta["kind"] == "style"]
    seen = {"chosen": Counter(), "rejected": Counter()}
    for r in style:
        attrs = data.users[r.user_id].attributes
        assert r.meta["chosen_steer"] == attrs and r.meta["rejected_steer"] != attrs
        assert attribute_preference(attrs, r.chosen, r.rejected) == 1
        assert all(matches(attrs, r.chosen).values())
        assert all(matches(r.meta["rejected_steer"], r.rejected).values())
        for side in seen:
            seen[side][tuple(r.meta[f"{side}_steer"][a] for a in AXIS_NAMES)] += 1
    assert len(seen["chosen"]) == len(seen["rejected"]) == 8
    # every combination is also produced for every question (responses are generated per combination)
    diag = json.loads((data48[0] / "diagnostics" / "diagnostics.json").read_text())
    assert diag["counts"]["responses_dropped_attribute_mismatch"] == 0
    assert diag["counts"].get("templates_unmatched", 0) == 0


def test_perspective_is_measured_by_first_person_pronouns(data48):
    _, data = data48
    rates = {"personal": [], "impersonal": []}
    for r in data.prefs:
        for side in ("chosen", "rejected"):
            rates[r.meta[f"{side}_steer"]["perspective"]].append(measure(getattr(r, side)).first_person)
    assert min(rates["personal"]) >= 0.04  # threshold 0.03: margin on both sides (median about 0.09)
    assert max(rates["impersonal"]) == 0.0


def test_every_answer_names_its_item_and_verbose_ones_twice(data48):
    _, data = data48
    items = items_by_question()
    for r in data.prefs:
        item = items[r.prompt]
        key = re.sub(r"^the\s+", "", item["short"], flags=re.I).lower()
        answers = [r.chosen] + ([r.rejected] if r.meta["kind"] == "style" else [])
        for a in answers:
            assert item["item"].lower() in a.lower(), (r.prompt, a)
            flags = assess(r.prompt, a)  # the eval's own on-topic and degenerate rules
            assert flags.acceptable, (a, flags.reasons)
            if measure(a).value("length") == "verbose":
                assert a.lower().count(key) >= 2, a
            assert not has_repeated_ngram(a, 4)


def test_details_differ_by_kind_of_item():
    domain = load_domain("reviews")
    kinds = domain.templates["kinds"]
    by_kind = {}
    for it in domain.questions["items"]:
        by_kind.setdefault(it["kind"], it)
        assert len(it["features"]) >= 2 and len(it["short"].split()) <= 3
    assert {"movie", "book", "restaurant", "gadget", "product"} <= set(by_kind)
    steer = {"sentiment": "positive", "length": "verbose", "perspective": "impersonal"}
    words = {}
    for kind, it in by_kind.items():
        info = item_info(it, kinds)
        texts = [templated_review(domain.templates, info, steer, random.Random(i), Counter()) for i in range(20)]
        nps = [a["np"] for a in kinds[kind]["aspects"]]
        assert any(np.lower() in t.lower() for t in texts for np in nps)
        assert any(f.lower() in t.lower() for t in texts for f in it["features"])
        words[kind] = {w for t in texts for w in t.lower().split()}
    assert "service" in words["restaurant"] and "service" not in words["movie"]
    assert "acting" in words["movie"] and "acting" not in words["gadget"]


def test_offtopic_pairs_at_the_configured_rate(data48):
    _, data = data48
    test_users = {u for u, p in data.users.items() if p.split == "test"}
    heldout_q = {r.prompt for r in data.prefs if r.split == "test" and r.user_id not in test_users}
    assert heldout_q  # held-out questions of training users exist
    style = [r for r in data.prefs if r.meta["kind"] == "style"]
    off = [r for r in data.prefs if r.meta["kind"] == "offtopic"]
    chosen_of = {(r.user_id, r.meta["question_id"]): r.chosen for r in style}
    train_q = Counter(r.user_id for r in style if r.split == "train")
    assert len(off) == sum(round(0.25 * n) for n in train_q.values()) > 0
    items = items_by_question()
    for r in off:
        assert r.split == "train" and r.user_id not in test_users and r.prompt not in heldout_q
        assert r.meta["judge"] == "topic" and r.meta["rejected_question_id"] != r.meta["question_id"]
        assert r.chosen == chosen_of[(r.user_id, r.meta["question_id"])]
        assert r.rejected == chosen_of[(r.user_id, r.meta["rejected_question_id"])]  # the user's own style
        assert r.meta["chosen_steer"] == r.meta["rejected_steer"] == data.users[r.user_id].attributes
        assert items[r.prompt]["item"].lower() in r.chosen.lower()
        assert items[r.prompt]["item"].lower() not in r.rejected.lower()
        assert assess(r.prompt, r.chosen).on_topic and not assess(r.prompt, r.rejected).on_topic
    # the rejected side answers a training question too (never a held-out one)
    qid_prompt = {r.meta["question_id"]: r.prompt for r in style}
    assert not {qid_prompt[r.meta["rejected_question_id"]] for r in off} & heldout_q


def test_offtopic_pairs_off_and_all(tmp_path):
    none = load_data(synth(tmp_path / "none", 8, 6, offtopic_pairs=0.0, repetition_pairs=0.0))
    assert all(r.meta["kind"] == "style" for r in none.prefs) and len(none.prefs) == 8 * 6
    every = load_data(synth(tmp_path / "all", 8, 6, offtopic_pairs=1.0))
    off = [r for r in every.prefs if r.meta["kind"] == "offtopic"]
    train_users = [u for u, p in every.users.items() if p.split == "train"]
    assert len(off) == 6 * len(train_users)
    assert main(["validate", str(tmp_path / "all")]) == 0


def test_repetition_pairs_loop_the_users_own_answer(data48):
    _, data = data48
    test_users = {u for u, p in data.users.items() if p.split == "test"}
    heldout_q = {r.prompt for r in data.prefs if r.split == "test" and r.user_id not in test_users}
    style = {(r.user_id, r.prompt): r for r in data.prefs if r.meta["kind"] == "style"}
    reps = [r for r in data.prefs if r.meta["kind"] == "repetition"]
    train_q = Counter(r.user_id for r in style.values() if r.split == "train")
    assert len(reps) == sum(round(0.25 * n) for n in train_q.values()) > 0
    for r in reps:
        assert r.split == "train" and r.user_id not in test_users and r.prompt not in heldout_q
        assert r.chosen == style[(r.user_id, r.prompt)].chosen  # the user's own preferred answer
        assert r.meta["judge"] == "repetition" and r.chosen != r.rejected
        if r.meta["repeated"] == "sentence":
            said = [x.rstrip(".!?") for x in r.rejected.split(". ")]
            assert len(set(said)) < len(said)  # a sentence said twice
        else:
            assert re.search(r"\b(\w+) and \1\b", r.rejected, re.I) and len(r.rejected.split()) == len(r.chosen.split())
    assert {r.meta["repeated"] for r in reps} == {"sentence", "word"}
    long = [r for r in reps if r.chosen.count(". ") >= 2 and r.meta["repeated"] == "sentence"]
    assert long and all(r.rejected.count(". ") == r.chosen.count(". ") for r in long)  # same sentence count


def test_looped_repeats_one_sentence_in_place_of_the_rest():
    import random

    from fspo.synth.pipeline import looped

    assert looped("Short one.", random.Random(0)) == ("Short one. Short one.", "sentence")
    assert looped("  ", random.Random(0)) is None
    doubled = {looped("The service is warm and attentive.", random.Random(seed)) for seed in range(20)}
    assert doubled == {
        ("The service is warm and warm.", "word"),
        ("The service is warm and attentive. The service is warm and attentive.", "sentence"),
    }
    assert looped("It is dull and dull.", random.Random(0))[1] == "sentence"  # no pair of two words
    text = "A is good. B is bad. C is fine. D is odd."
    for seed in range(20):
        out = [x.rstrip(".") for x in looped(text, random.Random(seed))[0].split(". ")]
        assert len(out) == 4 and out[0] == "A is good" and len(set(out)) < 4
        at = len(set(out)) - 1
        assert out[at:] == [out[at]] * (4 - at)


def test_query_only_pairs_are_never_shots(data48):
    from fspo.data.episodes import build_episodes, build_tree_episodes

    _, data = data48
    episodes, _ = build_episodes(data.prefs, n_shots=4, resamples=2)
    kinds = Counter(r.meta["kind"] for e in episodes for r in e.shots)
    assert set(kinds) == {"style"} and {e.query.meta["kind"] for e in episodes} >= {"offtopic", "repetition"}
    trees, _ = build_tree_episodes(data.prefs, n_shots=4, queries_per_tree=4, resamples=2)
    assert {r.meta["kind"] for t in trees for e in t for r in e.shots} == {"style"}


def test_same_seed_same_bytes(tmp_path):
    a, b = synth(tmp_path / "a", 16, 8, heldout_questions=0.25), synth(tmp_path / "b", 16, 8, heldout_questions=0.25)
    for f in ("prefs.jsonl", "users.jsonl", "diagnostics/diagnostics.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = synth(tmp_path / "c", 16, 8, seed=1)
    assert (a / "prefs.jsonl").read_bytes() != (c / "prefs.jsonl").read_bytes()


def test_wording_is_diverse(data48):
    """Measured 2026-11-30 on this fixture (48 users x 12 questions, seed 0): distinct-2 0.103,
    distinct-3 0.230, unique answers 0.79, top 4-gram with item names masked 5.1% of answers. The
    templates before issue 13: 0.009, 0.013, 0.03 and 31% ("recommend it to anyone")."""
    _, data = data48
    items = items_by_question()
    texts, masked = [], []
    for r in data.prefs:
        if r.meta["kind"] != "style":
            continue
        it = items[r.prompt]
        key = re.sub(r"^the\s+", "", it["short"], flags=re.I)
        for a in (r.chosen, r.rejected):
            texts.append(a)
            masked.append(re.sub(re.escape(key), "X", re.sub(re.escape(it["item"]), "X", a, flags=re.I), flags=re.I))
    d = text_diversity(texts)
    assert d["distinct_2"] >= 0.08 and d["distinct_3"] >= 0.18 and d["unique_answers"] >= 0.6
    assert d["repeated_4gram_answers"] == 0.0
    assert text_diversity(masked)["top_4gram_share"] <= 0.08
    diag = json.loads((data48[0] / "diagnostics" / "diagnostics.json").read_text())
    assert diag["diversity"]["style_pairs"] == d


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "quality_reviews.py"
    spec = importlib.util.spec_from_file_location("quality_reviews_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_unseen_combination_is_held_out_whole(tmp_path, capsys):
    bench = _bench()
    assert set(bench.HELDOUT_COMBO) == set(AXIS_NAMES)
    dest = bench.build_data(tmp_path, {"users": 32, "heldout_users": 0.25, "questions": 8}, 0)
    data = load_data(dest)
    combo = bench.combo_user_ids(data.users.values())
    assert len(combo) == 4  # 32 users over 8 combinations
    assert all(data.users[u].split == "test" for u in combo)
    train_combos = {tuple(p.attributes[a] for a in AXIS_NAMES) for p in data.users.values() if p.split == "train"}
    test_seen = {u for u, p in data.users.items() if p.split == "test" and u not in combo}
    assert len(train_combos) == 7 and tuple(bench.HELDOUT_COMBO[a] for a in AXIS_NAMES) not in train_combos
    assert test_seen  # held-out users of combinations training does see
    heldout = {u for u, p in data.users.items() if p.split == "test"}
    assert not [r for r in data.prefs if r.user_id in heldout and r.meta["kind"] in ("offtopic", "repetition")]
    assert all(r.split == "test" for r in data.prefs if data.users[r.user_id].split == "test")
    assert any(r.split == "test" for r in data.prefs if data.users[r.user_id].split == "train")  # held-out qs
    assert validate_file(dest / "prefs.jsonl") == []
    with pytest.raises(ValueError, match="every user axis"):
        bench.combo_user_ids(data.users.values(), {"sentiment": "negative", "length": "verbose"})


def test_200_users_24_questions_in_seconds(tmp_path):
    t = time.perf_counter()
    out = synth(tmp_path / "big", 200, 24, heldout_questions=0.2)
    seconds = time.perf_counter() - t
    data = load_data(out)
    train_users = [u for u, p in data.users.items() if p.split == "train"]
    assert len(train_users) >= 150
    assert len({r.chosen for r in data.prefs}) > 2000
    assert seconds < 60, seconds  # about 5 s on one core of the 2-core CI machine


def test_demo_defaults_still_make_valid_data(tmp_path):
    """fspo demo's synth call (src/fspo/demo.py) with its sizes: valid data the attribute judge can score."""
    out = synth(tmp_path / "demo", 32, 12, heldout_users=0.25)
    data = load_data(out)
    assert validate_file(out / "prefs.jsonl") == []
    test_users = [u for u, p in data.users.items() if p.split == "test"]
    assert len(test_users) == 8 and all(set(data.users[u].attributes) <= set(AXES) for u in test_users)
    assert all(r.meta["kind"] == "style" for r in data.prefs if r.user_id in test_users)


def test_malformed_templates_are_one_line(tmp_path, capsys):
    text = (resources.files("fspo.synth") / "domains" / "reviews.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("{Item} is {adj} and {adj2}.", "{Item} is {colour}.", 1))
    rc = main(["synth", "--domain", str(bad), "--backend", "none", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown slot {colour}" in err[0]
    bad.write_text(text.replace("kind: movie, short: Inception", "kind: opera, short: Inception", 1))
    rc = main(["synth", "--domain", str(bad), "--backend", "none", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "questions.items[0].kind" in err[0] and "'opera'" in err[0]
