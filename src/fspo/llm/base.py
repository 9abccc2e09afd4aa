"""One small protocol for text generation, so synth, eval and serve run on any backend.

A prompt is either raw text (completed as is) or a chat: a list of ``{"role", "content"}``
messages (rendered with the model's chat template or sent to a chat endpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

Message = dict[str, str]
Prompt = str | list[Message]


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Backend(Protocol):
    """Anything that turns prompts into texts. ``name`` identifies the model in caches and metadata."""

    name: str

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[str]: ...


def apply_stops(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the first stop string (backends that cannot stop server-side use this)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def prompt_text(prompt: Prompt) -> str:
    """A flat text view of a prompt (for rule-based backends and logging)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)
