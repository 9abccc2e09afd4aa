"""Tokenize an episode to fit ``max_length`` by dropping whole shots, oldest first.

The query question and both completions are never cut: cutting them (as the reference's
``keep_start`` truncation does) trains on a prompt without its question, or on empty answers.
An episode that does not fit even with zero shots is skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from fspo.data.episodes import Episode
from fspo.data.prompts import RenderedEpisode, render_episode, wrap_chat


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
        layout: str = "fspo",
        chat_template: bool = False,
        descriptions: dict[str, str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.layout = layout
        self.chat_template = chat_template
        self.descriptions = descriptions or {}
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; completions must end with one")

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, shots: Sequence, query) -> RenderedEpisode:
        description = self.descriptions.get(query.user_id)
        if self.layout in ("rat", "oracle") and not description:
            raise ValueError(f"user {query.user_id!r} has no description, needed by the {self.layout} layout")
        rendered = render_episode(shots, query, self.layout, description)
        if self.chat_template:
            rendered = RenderedEpisode(wrap_chat(self.tokenizer, rendered.prompt), rendered.chosen, rendered.rejected)
        return rendered

    def tokenize(self, episode: Episode, report: TruncationReport | None = None) -> TokenizedPair | None:
        eos = (self.tokenizer.eos_token_id,)
        shots = list(episode.shots)
        first = self.render(shots, episode.query)
        chosen = self.encode(first.chosen) + eos
        rejected = self.encode(first.rejected) + eos
        budget = self.max_length - max(len(chosen), len(rejected))
        rendered = first
        prompt = self.encode(rendered.prompt)
        while len(prompt) > budget and shots:
            shots.pop(0)  # oldest (Example 1) first; the query stays
            rendered = self.render(shots, episode.query)
            prompt = self.encode(rendered.prompt)
        if len(prompt) > budget:
            if report is not None:
                report.skipped_too_long += 1
            return None
        if report is not None:
            report.kept += 1
            report.shots_dropped += episode.n_shots - len(shots)
            report.shots_kept[len(shots)] += 1
        return TokenizedPair(prompt, chosen, rejected, len(shots), episode.user_id)

    def tokenize_all(self, episodes: Iterable[Episode]) -> tuple[list[TokenizedPair], TruncationReport]:
        report = TruncationReport()
        pairs = [p for p in (self.tokenize(e, report) for e in episodes) if p is not None]
        return pairs, report
