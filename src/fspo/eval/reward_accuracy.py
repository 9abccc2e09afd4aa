"""Reward accuracy: does the model, given N shots of a user, rank that user's chosen answer first?

Trained model with a reference: the implicit reward h = [s_θ(y_w) − s_θ(y_l)] − [s_ref(y_w) − s_ref(y_l)]
(β > 0 does not change the sign), correct when h > 0, with the reduction the run trained with.
Untrained model: the plain log-likelihood comparison s(y_w) > s(y_l), mean-reduced by default
(summed log-probs favour the shorter answer; docs/evaluation.md). A tie (h = 0)
counts as wrong. Log-probs are cached by (model fingerprint, token ids), so the base model scored
once serves as the reference of every run trained from it, and a zero-shot layout is scored once
for the whole curve.

Episodes whose prompts start alike (the same user's queries with the same shots) are scored as
shared-shot trees (``queries_per_tree``, default 8; :func:`fspo.train.packing.collate_trees`): the
shots run once per tree. This is exact (the same log-probs as separate episodes within float
rounding, tests/test_trees.py), so the scores do not depend on it, and it changes neither which
episodes nor which shots are scored: the episodes are the caller's. It saves time only where
episodes share their shots; :func:`fspo.eval.generate.select_episodes` samples each query's shots
separately, so its episodes share (almost) nothing and score at the same speed as before
(``bench/eval_trees.py`` measures both kinds).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from fspo.data.episodes import Episode
from fspo.data.truncation import EpisodeTokenizer, TokenizedPair
from fspo.eval.generate import ModelPool, model_fingerprint
from fspo.eval.winrate import wilson_interval
from fspo.llm.cache import CallCache


@dataclass(frozen=True)
class Scorer:
    """What to score: policy, optional reference, layout and reduction."""

    spec: str
    reference: str | None
    layout: str
    reduction: str = "mean"
    chat_template: bool = False

    @property
    def metric(self) -> str:
        return "implicit_reward" if self.reference else "loglik"


def _pair_key(fingerprint: str, pair: TokenizedPair, side: str) -> str:
    ids = list(pair.prompt_ids) + [-1] + list(pair.chosen_ids if side == "c" else pair.rejected_ids)
    return hashlib.sha256(json.dumps(["logp", fingerprint, ids]).encode()).hexdigest()


QUERIES_PER_TREE = 8


def sequence_logps(
    spec: str,
    pairs: Sequence[TokenizedPair],
    pool: ModelPool,
    cache: CallCache,
    batch_size: int = 4,
    queries_per_tree: int = QUERIES_PER_TREE,
) -> list[tuple[list[float], list[float]]]:
    """Per pair: ([sum, tokens] of chosen, [sum, tokens] of rejected) under model ``spec``, cached;
    only the tokens where the two completions differ count (as in training). Each forward takes
    ``batch_size`` rows: trees of up to ``queries_per_tree`` pairs that share their prompt's start
    (1: one pair per row)."""
    pairs = [p.preference_view() for p in pairs]
    fp = model_fingerprint(spec)
    keys = [(_pair_key(fp, p, "c"), _pair_key(fp, p, "r")) for p in pairs]
    found = cache.get_many([k for kk in keys for k in kk])
    todo = [i for i, (kc, kr) in enumerate(keys) if kc not in found or kr not in found]
    if todo:
        import torch

        from fspo.train.batching import pair_logps
        from fspo.train.packing import tree_groups

        model, tok = pool.get(spec)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        # rows: trees of pairs with a common prompt start (singletons when nothing is shared)
        rows = [[todo[j] for j in g] for g in tree_groups([pairs[i] for i in todo], max(1, queries_per_tree))]
        for start in range(0, len(rows), batch_size):
            idx = [i for row in rows[start : start + batch_size] for i in row]
            chunk = [pairs[i] for i in idx]
            # one shared-prefix sequence per pair or tree (the prompt runs once), with the dense mask:
            # segments (fspo.train.segments) scored the demo's 4-shot pairs 1.08x faster but change the
            # log-probs' last bits, and the eval's numbers stay bit for bit those of earlier versions
            with torch.no_grad():
                sc, sr = pair_logps(model, chunk, pad, "sum", model.device, True, max(1, queries_per_tree), False)
            new = {}
            for j, i in enumerate(idx):
                new[keys[i][0]] = [float(sc[j]), float(len(pairs[i].chosen_ids))]
                new[keys[i][1]] = [float(sr[j]), float(len(pairs[i].rejected_ids))]
            cache.put_many(new)
            found.update(new)
    return [(found[kc], found[kr]) for kc, kr in keys]


def _reduce(v: list[float], reduction: str) -> float:
    return v[0] if reduction == "sum" else v[0] / max(v[1], 1.0)


def margins(
    scorer: Scorer,
    episodes: Sequence[Episode],
    pool: ModelPool,
    cache: CallCache,
    max_length: int,
    descriptions: dict[str, str],
    batch_size: int = 4,
    queries_per_tree: int = QUERIES_PER_TREE,
) -> tuple[list[float], list[str], list[int]]:
    """(h or log-likelihood margin per kept episode, their user ids, shots kept per episode)."""
    tok = pool.tokenizer(scorer.spec)
    enc = EpisodeTokenizer(tok, max_length, scorer.layout, scorer.chat_template, descriptions)
    pairs = [p for p in (enc.tokenize(e) for e in episodes) if p is not None]
    pol = sequence_logps(scorer.spec, pairs, pool, cache, batch_size, queries_per_tree)
    if scorer.reference:
        if pool.tokenizer(scorer.reference).get_vocab() != tok.get_vocab():
            raise ValueError(f"reference {scorer.reference} has a different tokenizer from {scorer.spec}")
        ref = sequence_logps(scorer.reference, pairs, pool, cache, batch_size, queries_per_tree)
    out = []
    for i, (c, r) in enumerate(pol):
        m = _reduce(c, scorer.reduction) - _reduce(r, scorer.reduction)
        if scorer.reference:
            rc, rr = ref[i]
            m -= _reduce(rc, scorer.reduction) - _reduce(rr, scorer.reduction)
        out.append(m)
    return out, [p.user_id for p in pairs], [p.n_shots for p in pairs]


def accuracy_point(margin_values: Sequence[float], users: Sequence[str], shots_kept: Sequence[int]) -> dict:
    """One point of the curve: accuracy with a Wilson 95% interval (episodes treated as independent)."""
    n = len(margin_values)
    correct = sum(1 for m in margin_values if m > 0)
    lo, hi = wilson_interval(correct, n)
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else float("nan"),
        "ci": [lo, hi],
        "users": len(set(users)),
        "mean_margin": sum(margin_values) / n if n else float("nan"),
        "mean_shots_kept": sum(shots_kept) / n if n else float("nan"),
    }


def reward_accuracy_curve(
    scorer: Scorer,
    episodes_by_shots: dict[int, list[Episode]],
    pool: ModelPool,
    cache: CallCache,
    max_length: int,
    descriptions: dict[str, str],
    batch_size: int = 4,
    queries_per_tree: int = QUERIES_PER_TREE,
) -> dict:
    """Accuracy for each N of ``episodes_by_shots`` (N -> the same queries with N shots each)."""
    points = {}
    for n_shots, eps in sorted(episodes_by_shots.items()):
        m, users, kept = margins(scorer, eps, pool, cache, max_length, descriptions, batch_size, queries_per_tree)
        points[str(n_shots)] = accuracy_point(m, users, kept)
    return {
        "metric": scorer.metric,
        "reduction": scorer.reduction,
        "layout": scorer.layout,
        "model": scorer.spec,
        "reference": scorer.reference,
        "points": points,
    }
