"""The FSPO text layout (byte-compatible with the reference code) and its variants.

Layouts, selected by name:
- ``fspo``: shots show preferred and dispreferred responses; completion is the preferred-response block.
- ``rat``: same context; the completion first rationalizes a ``## User Description`` (RAT), then answers.
- ``oracle``: the gold ``## User Description`` is appended to the prompt; completion is the answer only.
- ``prefonly``: shots show only the preferred response under ``## Response``.
- ``zeroshot``: no shots at all (the task line changes, as in the reference for N = 0).

Header lines keep the reference's trailing space (``## Question \\n``) so token ids match released
checkpoints; the ``## User Description`` header has none, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fspo.data.schema import PreferenceRecord

LAYOUTS = ("fspo", "rat", "oracle", "prefonly", "zeroshot")

TASK_ZERO_SHOT = "Generate a response to the following question."
TASK_PREFERRED = "Given the examples above, generate a preferred response to the following question."
TASK_RESPONSE = "Given the examples above, generate a response to the following question."
TASK_RAT = "Generate a user description based on the examples above. Then, generate a preferred response to the following question."
TASK_RAT_PREFONLY = (
    "Generate a user description based on the examples above. Then, generate a response to the following question."
)
PREFERRED_HEADER = "## Preferred Response \n"
RESPONSE_HEADER = "## Response \n"
DESCRIPTION_HEADER = "## User Description\n"


@dataclass(frozen=True)
class RenderedEpisode:
    """Prompt text and the two completions of the query pair (EOS is added at tokenization)."""

    prompt: str
    chosen: str
    rejected: str


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown prompt layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return layout


def _shows_dispreferred(layout: str) -> bool:
    return layout != "prefonly"


def render_shots(shots: Sequence[PreferenceRecord], layout: str = "fspo") -> str:
    """The ``# Example i`` blocks, each followed by a blank line."""
    out = []
    for i, shot in enumerate(shots, start=1):
        block = f"# Example {i}\n## Question \n{shot.prompt.strip()}\n"
        if _shows_dispreferred(layout):
            block += f"{PREFERRED_HEADER}{shot.chosen.strip()}\n## Dispreferred Response \n{shot.rejected.strip()}\n"
        else:
            block += f"{RESPONSE_HEADER}{shot.chosen.strip()}\n"
        out.append(block + "\n")
    return "".join(out)


def task_line(layout: str, n_shots: int) -> str:
    if n_shots == 0 or layout == "zeroshot":
        return TASK_ZERO_SHOT
    if layout == "rat":
        return TASK_RAT
    if layout == "prefonly":
        return TASK_RESPONSE
    return TASK_PREFERRED


def render_prompt(
    shots: Sequence[PreferenceRecord], question: str, layout: str = "fspo", description: str | None = None
) -> str:
    """The full prompt: shots, task line, the query question (+ gold description for ``oracle``)."""
    check_layout(layout)
    if layout == "zeroshot":
        shots = ()
    text = render_shots(shots, layout) + "# Task\n" + task_line(layout, len(shots)) + "\n"
    text += f"## Question \n{question.strip()}\n"
    if layout == "oracle":
        if not description:
            raise ValueError("the oracle layout needs the user's description")
        text += f"{DESCRIPTION_HEADER}{description.strip()}\n"
    return text


def response_header(layout: str) -> str:
    return RESPONSE_HEADER if layout == "prefonly" else PREFERRED_HEADER


def render_completion(response: str, layout: str = "fspo", description: str | None = None) -> str:
    """One side of the query pair; RAT prefixes the user description."""
    text = f"{response_header(layout)}{response.strip()}\n"
    if layout == "rat":
        if not description:
            raise ValueError("the rat layout needs a user description to train on")
        text = f"{DESCRIPTION_HEADER}{description.strip()}\n" + text
    return text


def render_episode(
    shots: Sequence[PreferenceRecord],
    query: PreferenceRecord,
    layout: str = "fspo",
    description: str | None = None,
) -> RenderedEpisode:
    """Render an episode. For ``rat`` both completions carry the same (gold) description, so the
    preference loss compares only the answers while SFT teaches the description; this avoids the
    reference's label leak through differently formatted descriptions."""
    prompt = render_prompt(shots, query.prompt, layout, description)
    return RenderedEpisode(
        prompt,
        render_completion(query.chosen, layout, description),
        render_completion(query.rejected, layout, description),
    )


def generation_prefix(layout: str) -> str:
    """What to append to the prompt before free generation of the answer (``rat`` lets the model
    write its description first, so nothing is forced).

    The header's trailing whitespace is left for the model to write. Training encodes
    ``"## Preferred Response \n" + answer``, where a BPE tokenizer splits the `` \n`` into two tokens
    before the answer's first word; a prompt that *ends* in `` \n`` is encoded as one merged token the
    model never saw there, and a trained model answers it with EOS (seen with SmolLM2 after 80 IPO
    steps: every generation empty)."""
    header = DESCRIPTION_HEADER if layout == "rat" else response_header(layout)
    return header.rstrip()


def parse_generation(text: str, layout: str = "fspo") -> tuple[str, str | None]:
    """Split a generation that started after :func:`generation_prefix` into (answer, description)."""
    description = None
    header = response_header(layout)
    if layout == "rat":
        head, sep, rest = text.partition(header.strip())
        if sep:
            description = head.strip() or None
            text = rest
        else:
            return "", text.strip() or None
    lines = text.lstrip(" \n").splitlines()
    if lines and lines[0].startswith("#"):
        # The model restarted the template (e.g. echoed "## Question" first): take its first
        # response block, or nothing, never the echoed question.
        starts = [i for i, line in enumerate(lines) if line.strip() == header.strip()]
        lines = lines[starts[0] + 1 :] if starts else []
    answer = []
    for line in lines:
        if line.startswith("#"):  # the next example, task or question: the answer is over
            break
        answer.append(line)
    return "\n".join(answer).strip(), description


def wrap_chat(tokenizer, prompt: str) -> str:
    """Optional chat-template wrapping for instruct models: the FSPO prompt becomes the user turn."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template; use chat_template: false")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
