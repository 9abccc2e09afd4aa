"""The model card (``final/README.md``): what a person or the Hub needs to use the model alone.

Written by ``fspo train`` next to the run record in ``final/``; the card is for reading, the
run record (:data:`fspo.data.runs.RUN_FILE`) is what fspo itself reads.
"""

from __future__ import annotations

import json

from fspo.data.prompts import generation_prefix, layout_of, render_prompt
from fspo.data.runs import RUN_FILE, RunRecord
from fspo.data.schema import PreferenceRecord


def example_prompt(record: RunRecord) -> str:
    """The prompt the model expects, with two placeholder shots (fewer if it was trained with fewer)."""
    spec = layout_of(record.layout)
    shots = [
        PreferenceRecord("user", f"<question {i}>", f"<preferred answer {i}>", f"<dispreferred answer {i}>")
        for i in range(1, min(2, record.n_shots) + 1)
    ]
    description = "<user description>" if spec.needs_description else None
    return render_prompt(shots, "<new question>", spec, description) + generation_prefix(spec)


def model_card(record: RunRecord, command: str) -> str:
    """Markdown with Hub front matter: base model, tags, the FSPO layout, shots, token budget, an
    example prompt, the training command and the final metrics."""
    spec = layout_of(record.layout)
    stages = record.loss.split("+")
    tags = ["fspo", "personalization", "preference-optimization", *stages, f"layout-{spec.name}"]
    front = [
        "---",
        f"base_model: {json.dumps(record.base_model)}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        *(f"- {t}" for t in tags),
        "---",
    ]
    metrics = [f"| {k} | {v:.4g} |" for k, v in sorted(record.metrics.items()) if isinstance(v, (int, float))]
    body = [
        "",
        "# FSPO-personalized model",
        "",
        f"Trained with [fspo](https://arxiv.org/abs/2502.19312) (Few-Shot Preference Optimization) from "
        f"`{record.base_model}`: {' then '.join(s.upper() for s in stages)} on few-shot episodes of synthetic users. "
        "Give it a user's labeled preferences in the prompt and it answers new questions the way that user prefers.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| prompt layout | `{spec.name}` ({spec.help}) |",
        f"| shots (labeled preferences in the prompt) | {record.n_shots} (older shots are dropped to fit) |",
        f"| token budget | {record.max_length} tokens per sequence, prompt + answer |",
        f"| chat template | {'yes: the prompt is the user turn' if record.chat_template else 'no: plain text'} |",
        f"| log-prob reduction | {record.reduction} (β = {record.beta}) |",
        f"| fspo version | {record.fspo_version} |",
        "",
        "## Prompt",
        "",
        "Fill the shots with the user's (question, preferred, dispreferred) triples, oldest first, and "
        "let the model continue:",
        "",
        "```",
        example_prompt(record),
        "```",
        "",
        'With fspo: `fspo personalize --model THIS_FOLDER --prefs user.jsonl "question"`, or '
        f"`fspo serve --model THIS_FOLDER` (layout, shots and budget are read from `{RUN_FILE}`).",
        "",
        "## Training",
        "",
        "```",
        command,
        "```",
        "",
        *(["| metric | value |", "|---|---|", *metrics] if metrics else ["No metrics were recorded."]),
        "",
    ]
    return "\n".join(front + body)
