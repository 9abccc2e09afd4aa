"""fspo.data.attributes: the perspective axis (first-person pronoun rate) next to the older ones."""

from __future__ import annotations

import pytest

from fspo.data.attributes import (
    AXES,
    PERSONAL_MIN_RATE,
    Measurement,
    attribute_preference,
    first_person_rate,
    matches,
    measure,
)


def test_axes_keep_the_old_ones_and_add_perspective():
    assert AXES["sentiment"] == ("positive", "negative")
    assert AXES["length"] == ("concise", "verbose")
    assert AXES["reading_level"] == ("simple", "advanced")
    assert AXES["perspective"] == ("personal", "impersonal")
    m = Measurement(0.5, 10, 5.0)  # three-field construction still works
    assert m.first_person == 0.0 and m.value("perspective") == "impersonal"
    with pytest.raises(KeyError, match="unknown attribute axis"):
        m.value("tone")


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("I loved the movie Inception.", 1 / 5),
        ("We ate at Blue Harbor and our waiter was kind to us.", 3 / 12),
        ("I'm sure I've seen better; my friend agreed.", 3 / 8),
        ("The movie Inception is gripping and clever.", 0.0),
        ("", 0.0),
        ("I\u2019m happy.", 1 / 3),  # a curly apostrophe splits "I" off: still counted
    ],
)
def test_first_person_rate(text, rate):
    assert first_person_rate(text) == pytest.approx(rate)


def test_perspective_threshold():
    personal = "I watched the movie Jaws on a long flight, and it was wonderful."
    impersonal = "The movie Jaws is wonderful: the score lifts every big scene beautifully."
    assert measure(personal).value("perspective") == "personal"
    assert measure(impersonal).value("perspective") == "impersonal"
    # one stray first-person pronoun in a long, otherwise impersonal review stays impersonal
    long = " ".join(["The food is fresh and the service is warm."] * 5) + " I recommend it."
    assert first_person_rate(long) < PERSONAL_MIN_RATE and measure(long).value("perspective") == "impersonal"
    user = {"sentiment": "positive", "perspective": "personal"}
    assert matches(user, personal) == {"sentiment": True, "perspective": True}
    assert attribute_preference(user, personal, impersonal) == 1
    assert attribute_preference({"perspective": "impersonal"}, personal, impersonal) == -1


def test_measure_is_memoized_and_pure():
    text = "I found the Dyson cordless vacuum frustrating."
    assert measure(text) is measure(text)
    assert measure(text) == Measurement(measure(text).sentiment, 7, measure(text).grade, 1 / 7)
