"""From a dataset folder to tokenized training and held-out episodes, with the guards and summaries.

Held-out users (``split: test`` in users.jsonl or prefs.jsonl, plus an optional extra fraction of
training users) never reach the training episodes, as shot or as query: the sampler only ever
sees training rows, and :func:`fspo.data.splits.training_records` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fspo.data.episodes import EpisodeSummary, build_episodes
from fspo.data.io import load_data
from fspo.data.prompts import layout_of
from fspo.data.splits import evenly_spaced, heldout_records, heldout_user_ids, training_records
from fspo.data.truncation import EpisodeTokenizer, TokenizedPair, TruncationReport
from fspo.errors import FspoError
from fspo.train.config import DataConfig
from fspo.train.fingerprint import data_digest


@dataclass
class PreparedData:
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    train_users: list[str]
    heldout_users: list[str]
    episode_summary: EpisodeSummary
    truncation: TruncationReport
    eval_truncation: TruncationReport
    notes: list[str] = field(default_factory=list)
    digest: str = ""  # of the loaded records (fspo.train.fingerprint.data_digest)

    def lines(self) -> list[str]:
        return (
            [f"users: {len(self.train_users)} training, {len(self.heldout_users)} held out"]
            + self.episode_summary.lines()
            + self.truncation.lines()
            + [f"held-out eval episodes: {len(self.eval)}"]
            + self.notes
        )


def prepare_training_data(cfg: DataConfig, tokenizer, seed: int) -> PreparedData:
    data = load_data(cfg.path)
    digest = data_digest(data.prefs, data.users)
    train_users, heldout = heldout_user_ids(data, cfg.heldout_users, seed)
    train_rows = training_records(data.prefs, heldout)
    if not train_rows:
        raise FspoError(f"{data.source}: no training rows (all users are held out or split=test)")
    descriptions = {u.user_id: u.description for u in data.users.values() if u.description}
    if layout_of(cfg.layout).needs_description and not descriptions:
        raise FspoError(f"{data.source}: the {cfg.layout} layout needs user descriptions (users.jsonl)")
    episodes, summary = build_episodes(train_rows, cfg.shots, cfg.resamples, seed, cfg.short_users)
    if not episodes:
        raise FspoError(
            f"{data.source}: no training episodes: every user has fewer than 2 preferences with distinct questions"
        )
    enc = EpisodeTokenizer(tokenizer, cfg.max_length, cfg.layout, cfg.chat_template, descriptions)
    train_pairs, report = enc.tokenize_all(episodes)
    if not train_pairs:
        raise FspoError(f"no episode fits data.max_length={cfg.max_length} even with zero shots; raise it")
    eval_pairs: list[TokenizedPair] = []
    eval_report = TruncationReport()
    if cfg.eval_episodes > 0 and heldout:
        eval_eps, _ = build_episodes(heldout_records(data, heldout), cfg.shots, 1, seed, cfg.short_users)
        eval_pairs, eval_report = enc.tokenize_all(evenly_spaced(eval_eps, cfg.eval_episodes))
    notes = [] if heldout else ["no held-out users: training reports no held-out reward accuracy"]
    return PreparedData(train_pairs, eval_pairs, train_users, heldout, summary, report, eval_report, notes, digest)
