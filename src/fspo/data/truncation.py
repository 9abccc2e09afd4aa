"""Shot fitting and the one encode policy, shared by training, eval and serving.

:func:`fit_shots` drops whole shots, oldest first, until a prompt fits its token budget; the query
question and the completions are never cut (cutting them, as the reference's ``keep_start``
truncation does, trains on a prompt without its question, or on empty answers). An episode that
does not fit even with zero shots is skipped and counted.

:func:`encode_prompt` and :func:`encode_completion` are the only way text becomes token ids, so a
served prompt is token-for-token a prompt the model trained on: the prompt starts with the
tokenizer's BOS when the tokenizer adds one (Llama 3; SmolLM2 adds none), once, even when a chat
template already wrote it; completions never get special tokens (EOS is appended explicitly).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TypeVar

from fspo.data.episodes import Episode
from fspo.data.prompts import (
    FSPO,
    Layout,
    RenderedEpisode,
    generation_prefix,
    layout_of,
    render_episode,
    render_prompt,
    wrap_chat,
)
from fspo.data.rat_contrast import AttributeKey, rejected_description

S = TypeVar("S")


def encode_completion(tokenizer, text: str) -> tuple[int, ...]:
    """Token ids of a completion (or any continuation): no special tokens added."""
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=32)
def _bos_added(tokenizer) -> int | None:
    """The BOS id the tokenizer puts in front of plain text, or None if it adds none."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def encode_prompt(tokenizer, text: str) -> tuple[int, ...]:
    """Token ids of a prompt: the text, preceded by BOS if the tokenizer adds one and the text
    (e.g. a chat template's output) does not already start with it."""
    ids = encode_completion(tokenizer, text)
    bos = _bos_added(tokenizer)
    if bos is not None and (not ids or ids[0] != bos):
        ids = (bos, *ids)
    return ids


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt that fits its budget: its text, ids and the shots it kept (the newest ones)."""

    text: str
    ids: tuple[int, ...]
    n_shots: int


def fit_shots(tokenizer, shots: Sequence[S], render: Callable[[list[S]], str], budget: int) -> FittedPrompt | None:
    """The prompt ``render(kept)`` with the oldest shots dropped until it is at most ``budget``
    tokens; None if it does not fit even with no shots. ``shots`` are oldest first."""
    kept = list(shots)
    while True:
        text = render(kept)
        ids = encode_prompt(tokenizer, text)
        if len(ids) <= budget:
            return FittedPrompt(text, ids, len(kept))
        if not kept:
            return None
        kept.pop(0)  # oldest (Example 1) first; the query stays


def fit_generation_prompt(
    tokenizer,
    shots: Sequence,
    question: str,
    layout: str | Layout,
    budget: int,
    chat_template: bool = False,
    description: str | None = None,
) -> FittedPrompt | None:
    """The prompt a model generates its answer from (layout + :func:`generation_prefix`), with the
    oldest shots dropped until it is at most ``budget`` tokens (``max_length - max_new_tokens``).
    Its ids are a prefix of the training ids of the same episode (tested), so training, eval and
    serving see the same tokens. None if even the bare question does not fit."""
    spec = layout_of(layout)

    def render(kept: list) -> str:
        body = render_prompt(kept, question, spec, description)
        return (wrap_chat(tokenizer, body) if chat_template else body) + generation_prefix(spec)

    return fit_shots(tokenizer, list(shots) if spec.shows_shots else [], render, budget)


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one episode: the shared prompt and the two completions (EOS included)."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    n_shots: int
    user_id: str

    def preference_view(self) -> TokenizedPair:
        """The pair as a preference loss scores it: the completions' common leading tokens (the
        layout's response header, RAT's shared description) move into the prompt.

        They have the same context on both sides, so under ``sum`` they cancel in the margin anyway;
        under ``mean`` they would not (each side divides by its own length), and IPO learned to move
        the header's and description's log-probs to fake a margin on pairs of unequal length
        (SmolLM2, 80 IPO steps: the trained model no longer wrote the header). Idempotent."""
        n, limit = 0, min(len(self.chosen_ids), len(self.rejected_ids)) - 1
        while n < limit and self.chosen_ids[n] == self.rejected_ids[n]:
            n += 1
        if n == 0:
            return self
        return replace(
            self,
            prompt_ids=self.prompt_ids + self.chosen_ids[:n],
            chosen_ids=self.chosen_ids[n:],
            rejected_ids=self.rejected_ids[n:],
        )

    @property
    def length(self) -> int:
        """Tokens of the longer of the two sequences (prompt + completion)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class TruncationReport:
    kept: int = 0
    skipped_too_long: int = 0
    shots_dropped: int = 0
    shots_kept: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        hist = ", ".join(f"{k}: {v}" for k, v in sorted(self.shots_kept.items()))
        return [
            f"episodes tokenized: {self.kept}; skipped (too long even with 0 shots): {self.skipped_too_long}; "
            f"shots dropped to fit: {self.shots_dropped}",
            f"shots kept per episode: {hist or 'none'}",
        ]


class EpisodeTokenizer:
    """Renders and tokenizes episodes under one layout, length budget and tokenizer."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        layout: str | Layout = FSPO,
        chat_template: bool = False,
        descriptions: dict[str, str] | None = None,
        contrast: Mapping[AttributeKey, str] | None = None,
    ) -> None:
        """``contrast`` (RAT, ``data.rat_contrast``): attribute combination -> description
        (:func:`fspo.data.rat_contrast.shared_descriptions`); a rejected completion whose attributes
        are known there carries that description instead of the user's."""
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.layout = layout_of(layout).name
        self.chat_template = chat_template
        self.descriptions = descriptions or {}
        self.contrast = contrast if layout_of(layout).writes_description else None
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; completions must end with one")

    def render(self, shots: Sequence, query) -> RenderedEpisode:
        description = self.descriptions.get(query.user_id)
        if layout_of(self.layout).needs_description and not description:
            raise ValueError(f"user {query.user_id!r} has no description, needed by the {self.layout} layout")
        rejected = rejected_description(query, self.contrast) if self.contrast else None
        rendered = render_episode(shots, query, self.layout, description, rejected)
        if self.chat_template:
            rendered = RenderedEpisode(wrap_chat(self.tokenizer, rendered.prompt), rendered.chosen, rendered.rejected)
        return rendered

    def tokenize(self, episode: Episode, report: TruncationReport | None = None) -> TokenizedPair | None:
        eos = (self.tokenizer.eos_token_id,)
        full = self.render(episode.shots, episode.query)
        chosen = encode_completion(self.tokenizer, full.chosen) + eos
        rejected = encode_completion(self.tokenizer, full.rejected) + eos
        budget = self.max_length - max(len(chosen), len(rejected))
        shots = list(episode.shots) if layout_of(self.layout).shows_shots else []
        fitted = fit_shots(self.tokenizer, shots, lambda kept: self.render(kept, episode.query).prompt, budget)
        if fitted is None:
            if report is not None:
                report.skipped_too_long += 1
            return None
        if report is not None:
            report.kept += 1
            report.shots_dropped += len(shots) - fitted.n_shots
            report.shots_kept[fitted.n_shots] += 1
        return TokenizedPair(fitted.ids, chosen, rejected, fitted.n_shots, episode.user_id)

    def tokenize_all(self, episodes: Iterable[Episode]) -> tuple[list[TokenizedPair], TruncationReport]:
        report = TruncationReport()
        pairs = [p for p in (self.tokenize(e, report) for e in episodes) if p is not None]
        return pairs, report
