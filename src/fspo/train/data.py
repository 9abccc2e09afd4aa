"""From a dataset folder to tokenized training and held-out episodes, with the guards and summaries.

Held-out users (``split: test`` in users.jsonl or prefs.jsonl, plus an optional extra fraction of
training users) never reach the training episodes, as shot or as query: the sampler only ever
sees training rows, and :func:`fspo.data.splits.training_records` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from fspo.data.episodes import Episode, EpisodeSummary, build_episodes, build_tree_episodes
from fspo.data.io import PreferenceData, load_data
from fspo.data.prompts import layout_of
from fspo.data.rat_contrast import rejected_description, shared_descriptions
from fspo.data.splits import evenly_spaced, heldout_records, heldout_user_ids, training_records
from fspo.data.truncation import EpisodeTokenizer, TokenizedPair, TruncationReport
from fspo.errors import FspoError
from fspo.train.config import DataConfig


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
    trees: list[list[int]] | None = None  # data.queries_per_tree > 1: indices into train, one list per tree

    @cached_property
    def units(self) -> list[list[int]]:
        """What a micro-batch draws from: trees, or single pairs."""
        return self.trees if self.trees is not None else [[i] for i in range(len(self.train))]

    def lines(self) -> list[str]:
        return (
            [f"users: {len(self.train_users)} training, {len(self.heldout_users)} held out"]
            + self.episode_summary.lines()
            + self.truncation.lines()
            + [f"held-out eval episodes: {len(self.eval)}"]
            + self.notes
        )


def prepare_training_data(cfg: DataConfig, tokenizer, seed: int, data: PreferenceData | None = None) -> PreparedData:
    """``data``: the records of ``cfg.path`` when the caller has loaded them already."""
    data = data if data is not None else load_data(cfg.path)
    train_users, heldout = heldout_user_ids(data, cfg.heldout_users, seed)
    train_rows = training_records(data.prefs, heldout)
    if not train_rows:
        raise FspoError(f"{data.source}: no training rows (all users are held out or split=test)")
    descriptions = {u.user_id: u.description for u in data.users.values() if u.description}
    if layout_of(cfg.layout).needs_description and not descriptions:
        raise FspoError(f"{data.source}: the {cfg.layout} layout needs user descriptions (users.jsonl)")
    contrast, notes = None, []
    if cfg.rat_contrast:
        contrast, note = contrast_table(data, train_rows, set(train_users))
        notes.append(note)
    enc = EpisodeTokenizer(tokenizer, cfg.max_length, cfg.layout, cfg.chat_template, descriptions, contrast)
    # held-out reward accuracy keeps the gold description on both sides, as fspo eval scores RAT
    eval_enc = EpisodeTokenizer(tokenizer, cfg.max_length, cfg.layout, cfg.chat_template, descriptions)
    trees = None
    if cfg.queries_per_tree > 1:
        groups, summary = build_tree_episodes(
            train_rows, cfg.shots, cfg.queries_per_tree, cfg.resamples, seed, cfg.short_users
        )
        episodes = [e for g in groups for e in g]
        train_pairs, trees, report = tokenize_trees(enc, groups)
    else:
        episodes, summary = build_episodes(train_rows, cfg.shots, cfg.resamples, seed, cfg.short_users)
        train_pairs, report = enc.tokenize_all(episodes)
    if not episodes:
        raise FspoError(
            f"{data.source}: no training episodes: every user has fewer than 2 preferences with distinct questions"
        )
    if not train_pairs:
        raise FspoError(f"no episode fits data.max_length={cfg.max_length} even with zero shots; raise it")
    eval_pairs: list[TokenizedPair] = []
    eval_report = TruncationReport()
    if cfg.eval_episodes > 0 and heldout:
        eval_eps, _ = build_episodes(heldout_records(data, heldout), cfg.shots, 1, seed, cfg.short_users)
        eval_pairs, eval_report = eval_enc.tokenize_all(evenly_spaced(eval_eps, cfg.eval_episodes))
    if not heldout:
        notes.append("no held-out users: training reports no held-out reward accuracy")
    if trees is not None:
        notes.append(f"shared-shot trees: {len(trees)} trees of up to {cfg.queries_per_tree} queries")
    return PreparedData(train_pairs, eval_pairs, train_users, heldout, summary, report, eval_report, notes, trees)


def contrast_table(data, train_rows, train_users: set[str]) -> tuple[dict, str]:
    """``data.rat_contrast``: the descriptions training users share per attribute combination, and a
    note of how many training pairs get a contrasting description. Held-out users' descriptions are
    not read. No pair at all is an error: the option would silently change nothing."""
    table = shared_descriptions(u for u in data.users.values() if u.user_id in train_users)
    gold = {u.user_id: u.description.strip() for u in data.users.values()}
    differing = sum(
        1 for r in train_rows if (d := rejected_description(r, table)) is not None and d != gold.get(r.user_id)
    )
    if not differing:
        raise FspoError(
            f"{data.source}: data.rat_contrast: no training pair has a contrasting description (it needs "
            "meta.rejected_steer or meta.rejected_attributes on the pairs and users.jsonl users with those attributes who share one "
            "description)"
        )
    note = (
        f"rat_contrast: {differing} of {len(train_rows)} training pairs carry the description of a user who "
        f"prefers the rejected answer ({len(table)} attribute combinations with a shared description)"
    )
    return table, note


def tokenize_trees(
    enc: EpisodeTokenizer, groups: list[list[Episode]]
) -> tuple[list[TokenizedPair], list[list[int]], TruncationReport]:
    """Tokenize shared-shot trees. The token budget holds per branch: shots + query + answer <=
    ``max_length``, as for a separate episode (one branch is one episode's sequence). Each episode
    is fitted with :func:`fspo.data.truncation.fit_shots` (via ``enc.tokenize``); when the branches
    of a tree kept different numbers of shots, all of them keep the fewest (the newest ones), so the
    tree still shares one set of shots. A query that does not fit even with zero shots is skipped."""
    pairs: list[TokenizedPair] = []
    trees: list[list[int]] = []
    report = TruncationReport()
    for group in groups:
        fitted = [(e, enc.tokenize(e)) for e in group]
        fitted = [(e, p) for e, p in fitted if p is not None]
        report.skipped_too_long += len(group) - len(fitted)
        if not fitted:
            continue
        keep = min(p.n_shots for _, p in fitted)
        if any(p.n_shots != keep for _, p in fitted):
            fitted = [(e, enc.tokenize(Episode(e.user_id, e.shots[len(e.shots) - keep :], e.query))) for e, _ in fitted]
        tree = []
        for e, p in fitted:
            report.kept += 1
            report.shots_dropped += e.n_shots - p.n_shots
            report.shots_kept[p.n_shots] += 1
            tree.append(len(pairs))
            pairs.append(p)
        trees.append(tree)
    return pairs, trees, report
