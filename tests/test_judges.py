"""Both judges: the attribute judge on measurable texts, the LLM judge through scripted backends."""

from __future__ import annotations

import pytest

from fspo.errors import FspoError
from fspo.eval.judges import (
    AttributeJudge,
    Comparison,
    LLMJudge,
    combine_orders,
    judge_prompt,
    parse_verdict,
    verdict_kinds,
)
from fspo.llm.base import prompt_text

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
    assert v[0].detail == {"match_a": 2, "match_b": 0}
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
    assert "User description: This user prefers positive and concise reviews." in text
    assert "Question: Write a review of the film." in text


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
    text = judge_prompt("desc", "q?", "", "b")
    assert "Response A: (empty)" in text and text.rstrip().endswith('"Verdict: TIE".')
