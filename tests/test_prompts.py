"""Golden strings: the reference layout byte for byte, and each variant."""

import pytest

from fspo.data.prompts import generation_prefix, parse_generation, render_episode, render_prompt, wrap_chat
from fspo.data.schema import PreferenceRecord

SHOTS = [PreferenceRecord("u", "Q1", "W1", "L1"), PreferenceRecord("u", "Q2", "W2", "L2")]
QUERY = PreferenceRecord("u", "Qx", "Wx", "Lx")

FSPO = (
    "# Example 1\n## Question \nQ1\n## Preferred Response \nW1\n## Dispreferred Response \nL1\n\n"
    "# Example 2\n## Question \nQ2\n## Preferred Response \nW2\n## Dispreferred Response \nL2\n\n"
    "# Task\nGiven the examples above, generate a preferred response to the following question.\n"
    "## Question \nQx\n"
)


def test_reference_layout_byte_for_byte():
    ep = render_episode(SHOTS, QUERY, "fspo")
    assert ep.prompt == FSPO
    assert ep.chosen == "## Preferred Response \nWx\n"
    assert ep.rejected == "## Preferred Response \nLx\n"


def test_rat_layout():
    ep = render_episode(SHOTS, QUERY, "rat", description="Likes W.")
    assert ep.prompt == FSPO.replace(
        "Given the examples above, generate a preferred response to the following question.",
        "Generate a user description based on the examples above. Then, generate a preferred response to the "
        "following question.",
    )
    assert ep.chosen == "## User Description\nLikes W.\n## Preferred Response \nWx\n"
    assert ep.rejected == "## User Description\nLikes W.\n## Preferred Response \nLx\n"


def test_oracle_layout():
    ep = render_episode(SHOTS, QUERY, "oracle", description="Likes W.")
    assert ep.prompt == FSPO + "## User Description\nLikes W.\n"
    assert ep.chosen == "## Preferred Response \nWx\n"
    with pytest.raises(ValueError, match="description"):
        render_prompt(SHOTS, "Qx", "oracle")


def test_prefonly_layout():
    ep = render_episode(SHOTS, QUERY, "prefonly")
    assert ep.prompt == (
        "# Example 1\n## Question \nQ1\n## Response \nW1\n\n# Example 2\n## Question \nQ2\n## Response \nW2\n\n"
        "# Task\nGiven the examples above, generate a response to the following question.\n## Question \nQx\n"
    )
    assert ep.chosen == "## Response \nWx\n"


@pytest.mark.parametrize("shots", [SHOTS, []])
def test_zero_shot_layout(shots):
    ep = render_episode(shots, QUERY, "zeroshot")
    assert ep.prompt == "# Task\nGenerate a response to the following question.\n## Question \nQx\n"
    assert ep.chosen == "## Preferred Response \nWx\n"
    assert render_prompt([], "Qx", "fspo") == ep.prompt  # N = 0 in the fspo layout is the reference's zero-shot


def test_whitespace_is_stripped_like_the_reference():
    ep = render_episode([PreferenceRecord("u", " Q1 \n", "W1\n", " L1")], PreferenceRecord("u", "Qx\n", " Wx", "Lx"))
    assert "## Question \nQ1\n## Preferred Response \nW1\n## Dispreferred Response \nL1\n" in ep.prompt
    assert ep.chosen == "## Preferred Response \nWx\n"


def test_chat_template_wrapping(tiny):
    _, tok = tiny
    wrapped = wrap_chat(tok, FSPO)
    assert wrapped == f"<|im_start|>user\n{FSPO}<|im_end|>\n<|im_start|>assistant\n"


def test_parse_generation():
    assert parse_generation("Great film.\n# Example 3\n## Question", "fspo") == ("Great film.", None)
    assert parse_generation("Likes short.\n## Preferred Response \nShort!\n", "rat") == ("Short!", "Likes short.")
    assert parse_generation("only a description", "rat") == ("", "only a description")
    echoed = "## Question \nWrite a review.\n## Preferred Response \nGood one.\n# Example 2"
    assert parse_generation(echoed, "fspo") == ("Good one.", None)
    assert parse_generation("## Question \nWrite a review.\n", "fspo") == ("", None)
    assert parse_generation("## Response \nFine.", "prefonly") == ("Fine.", None)


def _generation_ids_prefix_training_ids(tokenizer, layout: str) -> bool:
    ep = render_episode(SHOTS, PreferenceRecord("u", "Qx", "Great movie.", "Bad."), layout, "Likes it.")
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    trained = enc(ep.prompt) + enc(ep.chosen)  # how the trainer encodes an episode
    prompted = enc(render_prompt(SHOTS, "Qx", layout, "Likes it.") + generation_prefix(layout))
    return trained[: len(prompted)] == prompted


@pytest.mark.parametrize("layout", ["fspo", "rat", "oracle", "prefonly"])
def test_generation_prompt_tokens_are_a_prefix_of_training_tokens(tiny, layout):
    assert _generation_ids_prefix_training_ids(tiny[1], layout)


@pytest.mark.embedded
@pytest.mark.parametrize("layout", ["fspo", "rat"])
def test_generation_prompt_tokens_match_training_with_smollm2(layout):
    """A prompt ending in the header's " \\n" encoded to a merged token training never shows there;
    the trained model answered it with EOS (every generation empty)."""
    from fspo.models.registry import load_tokenizer

    assert _generation_ids_prefix_training_ids(load_tokenizer("smollm2"), layout)
