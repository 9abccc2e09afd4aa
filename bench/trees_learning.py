"""Do shared-shot trees hurt learning? Held-out reward accuracy after equal training wall time.

Two arms start from the same model and train IPO with the trainer's own step (``stage_loss``,
backward, clipping, AdamW) on the same data:
- ``separate``: separate episodes, shared prefix, ``--batch`` pairs per step;
- ``trees``: ``data.queries_per_tree K``, ``--batch // K`` trees (up to ``--batch`` pairs) per step, or
  ``--trees-per-step`` trees (with ``--batch``: as many users per step as the separate arm, K times the pairs).
Steps of the two arms alternate, so both see the same machine load, and an arm takes another step
only while its step time so far plus its last step's time stays within ``--seconds`` (so neither
arm overshoots the budget by a whole step). Then both are scored on the same held-out episodes (held-out
users' preferences as queries, ``--eval-contexts`` shot samples each): correct when the implicit
reward h > 0 against the frozen starting model.

Test: the per-episode outcomes are paired (same episodes), so the difference trees − separate is
reported with McNemar's exact test (two-sided, on the discordant episodes) and a 95% interval
for the paired difference of proportions (Wald on the per-episode differences). Trees are "no
worse" when that interval's lower end is above −``--margin`` (a non-inferiority margin). Episodes
of one user are correlated (few held-out users), so the interval is optimistic.

    python bench/trees_learning.py                              # smollm2, examples/reviews, 4 shots
    python bench/trees_learning.py --model tiny --seconds 20    # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default="examples/reviews")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--trees", type=int, default=4, help="K: queries per tree of the trees arm")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step (the trees arm: batch // K trees)")
    ap.add_argument(
        "--trees-per-step",
        type=int,
        default=None,
        help="trees per step of the trees arm (default batch // K; = batch gives it as many users per step)",
    )
    ap.add_argument("--seconds", type=float, default=150.0, help="training step time per arm")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--sft-weight", type=float, default=0.5)
    ap.add_argument("--eval-contexts", type=int, default=3, help="shot samples per held-out query")
    ap.add_argument("--margin", type=float, default=0.05, help="non-inferiority margin (accuracy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.trees_per_step is not None and args.trees_per_step < 1:
        ap.error("--trees-per-step: at least 1")
    torch.set_num_threads(args.threads)

    from fspo.data.episodes import build_episodes
    from fspo.data.io import load_data
    from fspo.data.splits import heldout_records, heldout_user_ids
    from fspo.data.truncation import EpisodeTokenizer
    from fspo.models.registry import load_model
    from fspo.train.batching import pair_logps
    from fspo.train.config import TrainConfig
    from fspo.train.data import prepare_training_data
    from fspo.train.losses import log_ratio_margin
    from fspo.train.trainer import batch_indices, stage_loss

    arms = {}
    ref, tok = load_model(args.model, seed=args.seed)
    ref.requires_grad_(False).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for name, k in (("separate", 1), ("trees", args.trees)):
        cfg = TrainConfig()
        cfg.data.path, cfg.data.shots, cfg.data.queries_per_tree = args.data, args.shots, k
        cfg.optim.shared_prefix, cfg.optim.lr = True, args.lr
        cfg.optim.batch_size = args.batch if k == 1 else (args.trees_per_step or max(1, args.batch // k))
        cfg.loss.name, cfg.loss.beta, cfg.loss.reduction, cfg.loss.sft_weight = (
            "ipo",
            args.beta,
            "mean",
            args.sft_weight,
        )
        cfg.seed = args.seed
        data = prepare_training_data(cfg.data, tok, args.seed)
        policy, _ = load_model(args.model, seed=args.seed)
        policy.config.use_cache = False
        policy.train()
        opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=args.lr)
        arms[name] = {"cfg": cfg, "data": data, "policy": policy, "opt": opt, "used": 0.0, "steps": 0, "pairs": 0}
        print(f"{name}: {len(data.train)} training pairs in {len(data.units)} units; batch {cfg.optim.batch_size}")

    # the held-out episodes (same for both arms)
    data = load_data(args.data)
    _, heldout = heldout_user_ids(data, 0.0, args.seed)
    eps, _ = build_episodes(heldout_records(data, heldout), args.shots, args.eval_contexts, args.seed)
    descriptions = {u.user_id: u.description for u in data.users.values() if u.description}
    eval_pairs, _ = EpisodeTokenizer(
        tok, arms["separate"]["cfg"].data.max_length, "fspo", False, descriptions
    ).tokenize_all(eps)
    print(f"held-out: {len(heldout)} users, {len(eval_pairs)} episodes ({args.eval_contexts} shot samples per query)")

    t_start = time.perf_counter()
    rnd = 0

    def more(a) -> bool:
        return a["used"] + a.get("last", 0.0) <= args.seconds

    while any(more(a) for a in arms.values()):
        order = list(arms) if rnd % 2 == 0 else list(arms)[::-1]
        for name in order:
            a = arms[name]
            if not more(a):
                continue
            cfg, d = a["cfg"], a["data"]
            units = d.units
            picked = batch_indices(len(units), a["steps"], 0, cfg, cfg.seed)
            mine = [d.train[i] for u in picked for i in units[u]]
            t = time.perf_counter()
            loss, _, _ = stage_loss("ipo", a["policy"], ref, mine, cfg, pad, "cpu")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(a["policy"].parameters(), 1.0)
            a["opt"].step()
            a["opt"].zero_grad(set_to_none=True)
            a["last"] = time.perf_counter() - t
            a["used"] += a["last"]
            a["steps"] += 1
            a["pairs"] += len(mine)
        rnd += 1
    print(f"training: {time.perf_counter() - t_start:.0f} s wall for both arms")

    def scores(model):
        out = []
        with torch.no_grad():
            for i in range(0, len(eval_pairs), 8):
                c, r = pair_logps(model, eval_pairs[i : i + 8], pad, "mean", "cpu", True)
                out.append(torch.stack([c, r], 1))
        return torch.cat(out)

    ref_s = scores(ref)
    correct = {}
    for name, a in arms.items():
        a["policy"].eval()
        s = scores(a["policy"])
        h = log_ratio_margin(s[:, 0], s[:, 1], ref_s[:, 0], ref_s[:, 1])
        correct[name] = (h > 0).tolist()
    n = len(eval_pairs)
    res = {"args": vars(args), "n_eval": n, "arms": {}}
    for name, a in arms.items():
        acc = sum(correct[name]) / n
        res["arms"][name] = {"steps": a["steps"], "pairs": a["pairs"], "step_seconds": a["used"], "accuracy": acc}
        print(
            f"{name:>9}: {a['steps']} steps, {a['pairs']} pairs in {a['used']:.0f} s step time "
            f"({a['pairs'] / a['used']:.2f} pairs/s); held-out reward accuracy {acc:.3f} ({sum(correct[name])}/{n})"
        )
    diffs = [int(t) - int(s) for t, s in zip(correct["trees"], correct["separate"])]
    b = sum(1 for d in diffs if d > 0)  # trees right, separate wrong
    c = sum(1 for d in diffs if d < 0)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)
    half = 1.96 * math.sqrt(var / n)
    p = mcnemar_exact(b, c)
    no_worse = mean - half > -args.margin
    res.update({"difference": mean, "ci": [mean - half, mean + half], "mcnemar_b_c": [b, c], "mcnemar_p": p})
    res["no_worse"] = no_worse
    print(
        f"trees - separate: {mean:+.3f} [95% CI {mean - half:+.3f}, {mean + half:+.3f}]; McNemar exact p={p:.3f} "
        f"(discordant: {b} trees-only right, {c} separate-only right); no worse at margin {args.margin}: {no_worse}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
