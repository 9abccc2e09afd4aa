"""RAT's description check (issue 13, section 3): does a generated user description state the
user's true attribute values? Hand-written descriptions, right and wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fspo.data.schema import UserProfile
from fspo.eval.descriptions import description_accuracy, stated_attributes, states_attributes

POS_SHORT_IMP = {"sentiment": "positive", "length": "concise", "perspective": "impersonal"}
NEG_LONG_PERS = {"sentiment": "negative", "length": "verbose", "perspective": "personal"}


@pytest.mark.parametrize(
    "description, expected",
    [
        # the synth persona sentence itself (reviews.yaml describe phrases)
        (
            "This user likes reviews that are enthusiastic and positive, short and to the point, and impersonal "
            "and analytical, in the third person.",
            {"sentiment": "positive", "length": "concise", "perspective": "impersonal"},
        ),
        (
            "This user likes reviews that are critical and negative, long and detailed, and told in the first "
            "person from the reviewer's own experience.",
            {"sentiment": "negative", "length": "verbose", "perspective": "personal"},
        ),
        # paraphrases a model might write
        ("Prefers brief, upbeat reviews.", {"sentiment": "positive", "length": "concise", "perspective": None}),
        ("Wants harsh, lengthy write-ups about personal experience.", {"sentiment": "negative", "length": "verbose"}),
        # negation flips the value
        ("Does not like long reviews; dislikes negative ones.", {"sentiment": "positive", "length": "concise"}),
        # both values named: nothing stated
        ("Likes reviews that weigh positive and negative aspects.", {"sentiment": None}),
        # "impersonal" is not "personal"
        ("An impersonal tone.", {"perspective": "impersonal"}),
        # nothing about the axes
        ("The user is a reviewer.", {"sentiment": None, "length": None, "perspective": None}),
        ("", {"sentiment": None, "length": None, "perspective": None}),
    ],
)
def test_stated_attributes(description, expected):
    stated = stated_attributes(description)
    for axis, value in expected.items():
        assert stated[axis] == value, (description, axis, stated)


def test_states_attributes_per_axis():
    right = "This user likes short, enthusiastic reviews written impersonally, in the third person."
    assert states_attributes(right, POS_SHORT_IMP) == {"sentiment": True, "length": True, "perspective": True}
    wrong_length = "This user likes long, enthusiastic reviews in the third person."
    assert states_attributes(wrong_length, POS_SHORT_IMP) == {"sentiment": True, "length": False, "perspective": True}
    assert states_attributes(None, POS_SHORT_IMP) == {"sentiment": False, "length": False, "perspective": False}
    assert states_attributes("anything", {}) is None  # no measurable axis
    # only the user's axes count: a two-axis user is right without a perspective
    assert states_attributes("Short and positive.", {"sentiment": "positive", "length": "concise"}) == {
        "sentiment": True,
        "length": True,
    }


def test_description_accuracy_by_user_and_by_description():
    users = {
        "a": UserProfile(user_id="a", attributes=POS_SHORT_IMP),
        "b": UserProfile(user_id="b", attributes=NEG_LONG_PERS),
        "c": UserProfile(user_id="c", attributes={}),  # not measurable: left out
    }
    gens = [
        ("a", "Enthusiastic, short reviews, impersonal and analytical."),  # right
        ("a", "Positive and concise reviews from a third-person view."),  # right
        ("b", "Critical, detailed reviews from the reviewer's own experience."),  # right
        ("b", "Critical and short reviews in the first person."),  # wrong length
        ("b", ""),  # RAT skipped its description
        ("c", "whatever"),
    ]
    acc = description_accuracy(gens, users)
    assert acc["n_users"] == 2 and acc["n_descriptions"] == 5 and acc["missing"] == 1
    assert acc["users"] == 0.5  # a: every description right; b: not
    assert acc["descriptions"] == pytest.approx(3 / 5)
    assert acc["axes"] == {"sentiment": pytest.approx(4 / 5), "length": pytest.approx(3 / 5), "perspective": 0.8}
    assert description_accuracy([("c", "x")], users) is None
    # a plain attributes mapping works as the user too
    assert description_accuracy([("a", "short, positive, impersonal")], {"a": POS_SHORT_IMP})["users"] == 1.0


def test_every_reviews_describe_phrase_is_recognized():
    """The synth domain's own describe phrases state their value (read from the YAML, so a new phrase
    without a matching word here fails)."""
    import yaml

    spec = yaml.safe_load(Path("src/fspo/synth/domains/reviews.yaml").read_text())
    for axis, info in (spec.get("axes") or spec.get("attributes") or {}).items():
        for value, phrases in (info.get("describe") or {}).items():
            for phrase in [phrases] if isinstance(phrases, str) else phrases:
                assert stated_attributes(phrase)[axis] == value, (axis, value, phrase)


@pytest.mark.slow
def test_eval_reports_description_accuracy_for_rat(tmp_path):
    """fspo eval with a (tiny, 1-step) RAT run: the fspo-rat row carries description_accuracy, the
    report shows it, and rows that do not write a description have none."""
    from fspo.cli import main

    run = tmp_path / "rat"
    assert (
        main(
            [
                "train",
                "--model",
                "tiny",
                "--data",
                "examples/reviews",
                "--loss",
                "ipo",
                "--layout",
                "rat",
                "--shots",
                "2",
                "--steps",
                "1",
                "data.eval_episodes=0",
                "data.max_length=256",
                "loss.description_weight=1.0",
                "--out",
                str(run),
                "--progress",
                "false",
            ]
        )  # fmt: skip
        == 0
    )
    out = tmp_path / "eval"
    args = ["eval", "--data", "examples/reviews", "--methods", "base,fspo-rat", "--model", str(run)]
    args += ["--users", "2", "--queries", "1", "--shots", "2", "--shots-curve", "2", "--max-new-tokens", "8"]
    args += ["--max-length", "256", "--n-boot", "50", "--judge", "attribute", "--quiet", "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "eval.json").read_text())
    da = res["methods"]["fspo-rat"]["description_accuracy"]
    assert da["n_users"] == 2 and da["n_descriptions"] == 2 and 0.0 <= da["users"] <= 1.0
    assert set(da["axes"]) == {"sentiment", "length"}
    assert "description_accuracy" not in res["methods"]["base"]
    assert "fspo-rat** description accuracy" in (out / "report.md").read_text()
