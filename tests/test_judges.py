"""Both judges: the attribute judge on measurable texts, the LLM judge through scripted backends."""

from __future__ import annotations

import pytest

from fspo.data.attributes import attribute_preference, match_count
from fspo.errors import FspoError
from fspo.eval.acceptability import Calibration, assess
from fspo.eval.judges import AttributeJudge, Comparison, LLMJudge, verdict_kinds
from fspo.llm.base import prompt_text
from fspo.llm.pairwise import combine_orders, flatten, judge_messages, parse_verdict

POS_SHORT = "A wonderful, delightful film. I loved it."
NEG_LONG = (
    "I hated this film from start to finish. The plot was a boring mess and the acting was awful. "
    "Every scene dragged on far too long, the dialogue was dull, and I left the theatre disappointed "
    "and annoyed that I had wasted an entire evening on it."
)
USER_POS = {"sentiment": "positive", "length": "concise"}


def cmp(a, b, attrs=USER_POS, desc="This user prefers positive and concise reviews."):
    return Comparison("u1", "Write a review of the film.", a, b, desc, attrs)


def test_attribute_judge_prefers_matching_answer_symmetrically():
    j = AttributeJudge()
    v = j.judge([cmp(POS_SHORT, NEG_LONG), cmp(NEG_LONG, POS_SHORT), cmp(POS_SHORT, POS_SHORT)])
    assert [x.preference for x in v] == [1, -1, 0]
    assert v[0].detail["match_a"] == 2 and v[0].detail["match_b"] == 0
    assert v[0].detail["acceptable_a"] and v[0].detail["acceptable_b"] and not v[0].detail["gated"]
    assert not any(x.flipped for x in v)
    neg_user = {"sentiment": "negative", "length": "verbose"}
    assert j.judge([cmp(POS_SHORT, NEG_LONG, neg_user)])[0].preference == -1


def test_attribute_judge_needs_measurable_attributes():
    with pytest.raises(FspoError, match="--judge llm"):
        AttributeJudge().judge([cmp("a", "b", {"humor": "dry"})])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Reasoning here.\nVerdict: A", "A"),
        ("Verdict: b", "B"),
        ("**Verdict: TIE**\n\n", "TIE"),
        ("Verdict: B.", "B"),
        ("Verdict: A is better", None),  # not exactly a verdict line
        ("Verdict: A\nActually, B is better.", None),  # only the last line counts
        ("A", None),
        ("", None),
    ],
)
def test_parse_verdict_strict(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    "first,second,expected",
    [
        ("A", "B", (1, "agree")),  # a first shown as A, then as B: a wins both times
        ("B", "A", (-1, "agree")),
        ("TIE", "TIE", (0, "agree")),
        ("A", "A", (0, "flip")),  # position bias: always the first slot
        ("B", "B", (0, "flip")),
        ("A", "TIE", (0, "partial")),
        ("A", None, (0, "partial")),
        (None, None, (0, "unparsed")),
    ],
)
def test_combine_orders(first, second, expected):
    assert combine_orders(first, second) == expected


class FakeBackend:
    """Scripted judges: ``rule(prompt_text) -> reply``; records every prompt."""

    def __init__(self, rule):
        self.name = "fake"
        self.rule = rule
        self.prompts = []

    def generate(self, prompts, params):
        self.prompts += list(prompts)
        return [self.rule(prompt_text(p)) for p in prompts]


def _first_slot_answer(text: str) -> str:
    return text.split("Response A:")[1].split("Response B:")[0].strip()


def test_llm_judge_runs_both_orders_and_agrees():
    # A judge that picks the positive answer wherever it is shown: order-consistent.
    def rule(text):
        return "Verdict: A" if _first_slot_answer(text) == POS_SHORT else "Verdict: B"

    backend = FakeBackend(rule)
    v = LLMJudge(backend).judge([cmp(POS_SHORT, NEG_LONG), cmp(NEG_LONG, POS_SHORT)])
    assert [x.preference for x in v] == [1, -1]
    assert not any(x.flipped for x in v)
    assert len(backend.prompts) == 4  # both orders of both pairs
    text = prompt_text(backend.prompts[0])
    assert "User description:\nThis user prefers positive and concise reviews." in text
    assert "Question:\nWrite a review of the film." in text
    assert "mentions length" in text  # the length rule follows the description


def test_llm_judge_position_bias_becomes_ties_and_flips():
    v = LLMJudge(FakeBackend(lambda t: "I like the first.\nVerdict: A")).judge([cmp(POS_SHORT, NEG_LONG)] * 3)
    assert [x.preference for x in v] == [0, 0, 0]
    assert all(x.flipped for x in v)
    assert verdict_kinds(v) == {"flip": 3}


def test_llm_judge_unparseable_is_tie_not_flip():
    v = LLMJudge(FakeBackend(lambda t: "Both are fine.")).judge([cmp(POS_SHORT, NEG_LONG)])
    assert v[0].preference == 0 and not v[0].flipped and v[0].detail["kind"] == "unparsed"


def test_llm_judge_needs_description():
    with pytest.raises(FspoError, match="description"):
        LLMJudge(FakeBackend(lambda t: "Verdict: A")).judge([cmp("a", "b", desc="")])


def test_llm_judge_with_project_scripted_backend():
    scripted = pytest.importorskip("fspo.llm.scripted")
    judge = LLMJudge(scripted.ScriptedBackend())
    # The scripted judge scores sentiment words named in the description; it reads our prompt sections.
    a = "I loved it. Truly delightful."
    b = "I hated it. It was awful."
    v = judge.judge([cmp(a, b), cmp(b, a)])
    assert all(x.detail["kind"] in ("agree", "flip", "partial", "unparsed") for x in v)
    assert [x.preference for x in v] == [1, -1]


def test_judge_prompt_fills_empty_answers():
    text = flatten(judge_messages("desc", "q?", "", "b", allow_tie=True))
    assert "Response A:\n(empty)" in text and text.rstrip().endswith('"Verdict: TIE".')


# --- the acceptability gate (issue 13) ------------------------------------------------------------

BLUE_HARBOR = "Write a review of the Blue Harbor seafood grill."
# (question, bad answer, user attributes the bad answer matches better, a fluent on-topic answer).
# The bad answers are the trained demo model's (issue 13; loops continued as the "..." says)
# and the base model's own sentence loop; each fluent answer expresses fewer of the user's attributes.
BAD_VS_GOOD = [
    (
        "Write a review of the Dyson cordless vacuum.",
        "The quality of the quality of the quality of the product of the quality of the quality of the quality",
        {"sentiment": "negative", "length": "concise"},
        "I love the Dyson cordless vacuum. It is light, strong and the battery easily lasts through the whole "
        "house; emptying the bin is quick and clean, and it fits in a cupboard.",
    ),
    (
        "Write a review of the movie Jaws.",
        "boring and boring and boring and boring and boring and boring and boring",
        {"sentiment": "negative", "length": "concise"},
        "Jaws is a thrilling, beautifully paced classic; the shark barely appears and that makes it scarier. The "
        "cast is wonderful, the score is iconic, and the final hunt at sea is still gripping today.",
    ),
    (
        "Write a review of the Burger Barn.",
        "Burger Barn is burger burger Burger Barn is burger burger Burger Barn is burger burger Burger Barn is burger",
        {"sentiment": "positive", "length": "concise"},
        "Sadly, the Burger Barn served us cold, greasy burgers and soggy fries. The staff ignored us, the tables "
        "were sticky, and we waited forty minutes. I would not go back.",
    ),
    (
        "Write a review of the Canon compact camera.",
        "Canon Canon Canon Canon Canon Canon Canon Canon Canon Canon",
        {"sentiment": "positive", "length": "concise"},
        "The Canon compact camera disappointed me. Photos came out soft and noisy indoors, the zoom is sluggish, "
        "the battery barely lasts a day of shooting, and the menus are confusing to navigate.",
    ),
    (
        BLUE_HARBOR,
        "The movie Inception is awful and disappointing.",
        {"sentiment": "negative", "length": "concise"},
        "The Blue Harbor seafood grill is a delight: the oysters were fresh, the grilled fish was tender, the "
        "staff were warm and attentive, and the view over the water at sunset made the evening.",
    ),
    (
        BLUE_HARBOR,
        "To be honest, the Little Italy pizzeria is dull and awful.",
        {"sentiment": "negative", "length": "concise"},
        "The Blue Harbor seafood grill is a delight: the oysters were fresh, the grilled fish was tender, the "
        "staff were warm and attentive, and the view over the water at sunset made the evening.",
    ),
    (
        "Write a review of the movie Alien.",
        "The Shark is scarf the screen; the screen is scarf the shark's hide;",
        {"sentiment": "negative", "length": "concise"},
        "Alien is a superb, tense classic. Ridley Scott builds dread slowly, the ship feels real and lived in, and "
        "Sigourney Weaver is wonderful as a calm, resourceful hero you cannot stop rooting for.",
    ),
    (
        "Write a review of the movie The Grand Budapest Hotel.",
        "The Grand Budapest Hotel is a must-see film. It's a must-see film. The Grand Budapest Hotel is a must-see "
        "film. It's a must-see film.",
        {"sentiment": "positive", "length": "verbose"},
        "Sadly, The Grand Budapest Hotel left me cold; the style is relentless and the characters never felt "
        "real to me, so by the end I was tired of the jokes and bored of the pastel sets.",
    ),
    (
        BLUE_HARBOR,
        "The Blue Harbor seafood grill is great. ## Preferred Response The Blue Harbor seafood grill is great.",
        {"sentiment": "positive", "length": "concise"},
        "Sadly, the Blue Harbor seafood grill was a letdown: the fish was dry, the chips were soggy, the staff "
        "forgot our drinks and we waited forty minutes for a table on a quiet night.",
    ),
    (
        BLUE_HARBOR,
        "This user likes reviews that are positive and concise. Blue Harbor is great.",
        {"sentiment": "positive", "length": "concise"},
        "Sadly, the Blue Harbor seafood grill was a letdown: the fish was dry, the chips were soggy, the staff "
        "forgot our drinks and we waited forty minutes for a table on a quiet night.",
    ),
    (BLUE_HARBOR, BLUE_HARBOR, {"sentiment": "positive", "length": "concise"},
     "Sadly, the Blue Harbor seafood grill was a letdown: the fish was dry, the chips were soggy, the staff "
     "forgot our drinks and we waited forty minutes for a table on a quiet night."),
    (BLUE_HARBOR, "", {"length": "concise"},
     "Sadly, the Blue Harbor seafood grill was a letdown: the fish was dry, the chips were soggy, the staff "
     "forgot our drinks and we waited forty minutes for a table on a quiet night."),
]  # fmt: skip


@pytest.mark.parametrize("question,bad,attrs,good", BAD_VS_GOOD)
def test_every_kind_of_bad_answer_loses_to_a_fluent_on_topic_one(question, bad, attrs, good):
    assert not assess(question, bad).acceptable and assess(question, good).acceptable, assess(question, bad)
    # The bad answer expresses more of this user's attributes ...
    assert match_count(attrs, bad) > match_count(attrs, good)
    judge = AttributeJudge()
    for a, b, want in ((bad, good, -1), (good, bad, 1)):  # ... yet it loses, in either slot
        v = judge.judge([Comparison("u1", question, a, b, "", attrs)])[0]
        assert v.preference == want and v.detail["gated"]
        assert v.detail["judge_preference"] == attribute_preference(attrs, a, b)
        bad_side = "a" if a is bad else "b"
        assert not v.detail[f"acceptable_{bad_side}"] and v.detail[f"flags_{bad_side}"]["flags"]


def test_the_bad_answers_would_have_won_without_the_gate():
    """The attributes-only judge (before issue 13) preferred every one of them."""
    assert all(attribute_preference(at, bad, good) == 1 for _, bad, at, good in BAD_VS_GOOD)


def test_two_bad_answers_tie():
    judge = AttributeJudge()
    pairs = [
        (BLUE_HARBOR, "The movie Inception is awful and disappointing.", "To be honest, the Little Italy pizzeria is dull and awful."),
        (BLUE_HARBOR, "The movie Inception is awful and disappointing.", "Blue Harbor Blue Harbor Blue Harbor Blue Harbor Blue Harbor"),
        ("Write a review of the Canon compact camera.", "Canon Canon Canon Canon Canon Canon Canon Canon", ""),
    ]  # fmt: skip
    attrs = {"sentiment": "negative", "length": "concise"}
    for q, a, b in pairs:
        v = judge.judge([Comparison("u1", q, a, b, "", attrs)])[0]
        assert v.preference == 0 and v.detail["gated"] and not v.detail["acceptable_a"] and not v.detail["acceptable_b"]


def test_caller_flags_override_the_judges_own_check():
    """The eval runner passes flags computed with shots, NLL and calibration; the judge uses them as given."""
    q, good = BLUE_HARBOR, "The Blue Harbor seafood grill is wonderful."
    salad = assess(q, good, nll=9.0, calibration=Calibration(nll_max=6.0))
    assert salad.degenerate
    v = AttributeJudge().judge([Comparison("u1", q, good, good, "", USER_POS, flags_a=salad)])[0]
    assert v.preference == -1 and v.detail["flags_a"]["nll"] == 9.0
    # Shots let the judge see a verbatim copy.
    shot = "The Blue Harbor seafood grill is wonderful."
    v = AttributeJudge().judge([Comparison("u1", q, good, POS_SHORT, "", USER_POS, shots=(shot,))])[0]
    assert v.detail["flags_a"]["template_leak"]


def test_llm_judge_applies_the_same_gate_and_keeps_its_own_verdict():
    # A judge that always prefers the off-topic answer, in both orders (an order-consistent mistake).
    off = "The movie Inception is awful and disappointing."
    good = "The Blue Harbor seafood grill is a delight, with fresh oysters and tender grilled fish."

    def rule(text):
        return "Verdict: A" if _first_slot_answer(text) == off else "Verdict: B"

    backend = FakeBackend(rule)
    c = Comparison("u1", BLUE_HARBOR, off, good, "This user likes negative reviews.", {})
    v = LLMJudge(backend).judge([c, Comparison("u1", BLUE_HARBOR, good, off, c.description, {})])
    assert len(backend.prompts) == 4  # every pair is still judged in both orders
    assert [x.preference for x in v] == [-1, 1]
    assert [x.detail["judge_preference"] for x in v] == [1, -1] and all(x.detail["gated"] for x in v)
    assert v[0].detail["kind"] == "agree" and v[0].detail["flags_a"]["off_topic"]
    assert verdict_kinds(v) == {"agree": 2}
    # Two unacceptable answers tie whatever the LLM says.
    both = Comparison("u1", BLUE_HARBOR, off, "Canon Canon Canon Canon Canon Canon", c.description, {})
    assert LLMJudge(FakeBackend(lambda t: "Verdict: A")).judge([both])[0].preference == 0
