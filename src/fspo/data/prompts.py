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

TASK_ZERO_SHOT = "Generate a response to the following question."
TASK_PREFERRED = "Given the examples above, generate a preferred response to the following question."
TASK_RESPONSE = "Given the examples above, generate a response to the following question."
TASK_RAT = "Generate a user description based on the examples above. Then, generate a preferred response to the following question."
PREFERRED_HEADER = "## Preferred Response \n"
RESPONSE_HEADER = "## Response \n"
DESCRIPTION_HEADER = "## User Description\n"


@dataclass(frozen=True)
class Layout:
    """What a prompt layout shows and asks for; every other module asks these questions here
    instead of testing layout names."""

    name: str
    shows_shots: bool  # the prompt carries the user's labeled shots
    shows_dispreferred: bool  # each shot shows the dispreferred response too
    writes_description: bool  # the model writes a ``## User Description`` before answering (RAT)
    description_in_prompt: bool  # the gold description is given in the prompt (oracle)
    task: str  # the task line when shots are shown
    response_header: str
    help: str

    @property
    def needs_description(self) -> bool:
        """Training or scoring needs each user's gold description (users.jsonl)."""
        return self.writes_description or self.description_in_prompt

    @property
    def servable(self) -> bool:
        """Usable for a real person, who has labeled pairs but no gold description."""
        return not self.description_in_prompt


_SHOTS = dict(shows_shots=True, shows_dispreferred=True, writes_description=False, description_in_prompt=False)
FSPO = Layout(
    "fspo",
    **_SHOTS,
    task=TASK_PREFERRED,
    response_header=PREFERRED_HEADER,
    help="shots with preferred and dispreferred responses",
)
RAT = Layout(
    "rat",
    **_SHOTS | {"writes_description": True},
    task=TASK_RAT,
    response_header=PREFERRED_HEADER,
    help="FSPO context; the model writes a user description, then answers",
)
ORACLE = Layout(
    "oracle",
    **_SHOTS | {"description_in_prompt": True},
    task=TASK_PREFERRED,
    response_header=PREFERRED_HEADER,
    help="FSPO context plus the gold user description",
)
PREFONLY = Layout(
    "prefonly",
    **_SHOTS | {"shows_dispreferred": False},
    task=TASK_RESPONSE,
    response_header=RESPONSE_HEADER,
    help="shots with the preferred response only",
)
ZEROSHOT = Layout(
    "zeroshot",
    **_SHOTS | {"shows_shots": False, "shows_dispreferred": False},
    task=TASK_ZERO_SHOT,
    response_header=PREFERRED_HEADER,
    help="no shots: the question alone",
)

LAYOUT_SPECS: dict[str, Layout] = {x.name: x for x in (FSPO, RAT, ORACLE, PREFONLY, ZEROSHOT)}
LAYOUTS = tuple(LAYOUT_SPECS)


def layout_of(layout: str | Layout) -> Layout:
    """The :class:`Layout` named ``layout`` (a Layout passes through); ValueError if unknown."""
    if isinstance(layout, Layout):
        return layout
    spec = LAYOUT_SPECS.get(layout)
    if spec is None:
        raise ValueError(f"unknown prompt layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return spec


@dataclass(frozen=True)
class RenderedEpisode:
    """Prompt text and the two completions of the query pair (EOS is added at tokenization)."""

    prompt: str
    chosen: str
    rejected: str


def check_layout(layout: str) -> str:
    return layout_of(layout).name


def render_shots(shots: Sequence[PreferenceRecord], layout: str | Layout = FSPO) -> str:
    """The ``# Example i`` blocks, each followed by a blank line."""
    spec = layout_of(layout)
    out = []
    for i, shot in enumerate(shots, start=1):
        block = f"# Example {i}\n## Question \n{shot.prompt.strip()}\n"
        if spec.shows_dispreferred:
            block += f"{PREFERRED_HEADER}{shot.chosen.strip()}\n## Dispreferred Response \n{shot.rejected.strip()}\n"
        else:
            block += f"{RESPONSE_HEADER}{shot.chosen.strip()}\n"
        out.append(block + "\n")
    return "".join(out)


def task_line(layout: str | Layout, n_shots: int) -> str:
    spec = layout_of(layout)
    return spec.task if n_shots and spec.shows_shots else TASK_ZERO_SHOT


def render_prompt(
    shots: Sequence[PreferenceRecord], question: str, layout: str | Layout = FSPO, description: str | None = None
) -> str:
    """The full prompt: shots, task line, the query question (+ gold description for ``oracle``)."""
    spec = layout_of(layout)
    if not spec.shows_shots:
        shots = ()
    text = render_shots(shots, spec) + "# Task\n" + task_line(spec, len(shots)) + "\n"
    text += f"## Question \n{question.strip()}\n"
    if spec.description_in_prompt:
        if not description:
            raise ValueError(f"the {spec.name} layout needs the user's description")
        text += f"{DESCRIPTION_HEADER}{description.strip()}\n"
    return text


def response_header(layout: str | Layout) -> str:
    return layout_of(layout).response_header


def render_completion(response: str, layout: str | Layout = FSPO, description: str | None = None) -> str:
    """One side of the query pair; RAT prefixes the user description."""
    spec = layout_of(layout)
    text = f"{spec.response_header}{response.strip()}\n"
    if spec.writes_description:
        if not description:
            raise ValueError(f"the {spec.name} layout needs a user description to train on")
        text = f"{DESCRIPTION_HEADER}{description.strip()}\n" + text
    return text


def render_episode(
    shots: Sequence[PreferenceRecord],
    query: PreferenceRecord,
    layout: str | Layout = FSPO,
    description: str | None = None,
    rejected_description: str | None = None,
) -> RenderedEpisode:
    """Render an episode. For ``rat`` both completions carry the same (gold) description by default,
    so the preference loss compares only the answers while SFT teaches the description; this avoids
    the reference's label leak through differently formatted descriptions.

    ``rejected_description`` (``rat``, ``data.rat_contrast``): the rejected completion carries the
    description of a user who would prefer the rejected answer, written from the same template
    (:mod:`fspo.data.rat_contrast`), so the preference loss trains the description as well: the two
    differ only in the attribute words, which is no format leak."""
    prompt = render_prompt(shots, query.prompt, layout, description)
    return RenderedEpisode(
        prompt,
        render_completion(query.chosen, layout, description),
        render_completion(query.rejected, layout, rejected_description or description),
    )


def generation_prefix(layout: str | Layout) -> str:
    """What to append to the prompt before free generation of the answer (``rat`` lets the model
    write its description first, so nothing is forced).

    The header's trailing whitespace is left for the model to write. Training encodes
    ``"## Preferred Response \n" + answer``, where a BPE tokenizer splits the `` \n`` into two tokens
    before the answer's first word; a prompt that *ends* in `` \n`` is encoded as one merged token the
    model never saw there, and a trained model answers it with EOS (seen with SmolLM2 after 80 IPO
    steps: every generation empty)."""
    spec = layout_of(layout)
    header = DESCRIPTION_HEADER if spec.writes_description else spec.response_header
    return header.rstrip()


def parse_generation(text: str, layout: str | Layout = FSPO) -> tuple[str, str | None]:
    """Split a generation that started after :func:`generation_prefix` into (answer, description)."""
    description = None
    spec = layout_of(layout)
    header = spec.response_header
    if spec.writes_description:
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
