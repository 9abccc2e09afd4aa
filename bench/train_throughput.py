"""Training throughput: fspo's trainer step (shared prefix, and shared-shot trees) vs TRL's DPOTrainer,
alternated in one run.

Both sides train the same model (the embedded SmolLM2-135M by default, fp32, full fine-tuning)
with a separate frozen reference copy, on the same deterministic FSPO episodes, in the same
order, with the same batch size, IPO loss (per-token mean log-probs, β 0.1), AdamW, learning
rate and gradient clipping. TRL gets our exact token ids (pre-tokenized rows; its own
tokenization is skipped and not timed). Rounds alternate fspo and TRL; the first step of
every round is a warm-up and is not timed.

Definitions (printed with the results):
- useful tokens: prompt + chosen + rejected of each pair (identical for both sides);
- processed tokens: what the forward actually runs (TRL: 2·prompt + chosen + rejected + padding;
  fspo: prompt + chosen + rejected + padding; fspo-trees: each tree's shots once, then every
  query's rest of the prompt and both answers, + padding);
- GFLOP/s: 8·params·processed_tokens / s (6·N·T for the policy forward+backward, 2·N·T for the
  reference forward; attention FLOPs ignored), against a torch.mm roofline measured right before and
  after each of the side's rounds (this machine's torch.mm rate moved between 143 and 270 GFLOP/s
  from one run to the next, so a roofline measured once at the start made %roof drift with it);
- peak memory: CPU: the highest process RSS sampled every 2 ms during the side's timed steps
  (psutil; glibc is asked to return freed memory before each phase), and that peak minus the RSS
  just before the phase; CUDA: torch.cuda.max_memory_allocated.

    python bench/train_throughput.py                  # 0, 2, 4, 8 shots; last line speedup_vs_trl=X.XX (8 shots)
    python bench/train_throughput.py --shots 8 --rounds 1 --steps 1 --grad-ckpt
    python bench/train_throughput.py --device cuda --dtype bfloat16   # on a GPU
    python bench/train_throughput.py --shots 8 --rounds 1 --steps 1 --trees 4 --batch-size 4 --trl-batch-size 2

``--trees K``: the pairs come from shared-shot tree episodes (K queries of a user share one set of
shots; ``fspo.data.episodes.build_tree_episodes``), and the side ``fspo-trees`` (the trainer with
``data.queries_per_tree K``) runs next to fspo (shared prefix) and TRL on the *same* pairs in the
same order (a batch holds whole trees when the batch size is a multiple of K). The last lines
then print ``speedup_vs_trl_shared_prefix``, ``speedup_vs_trl_trees`` and ``speedup_vs_trl`` (trees).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from fspo.data.episodes import build_episodes, build_tree_episodes  # noqa: E402
from fspo.data.schema import PreferenceRecord  # noqa: E402
from fspo.data.truncation import EpisodeTokenizer, TokenizedPair  # noqa: E402

# ------------------------------------------------------------------ deterministic FSPO episodes

_KINDS = ["movie", "novel", "restaurant", "album", "hotel", "museum", "podcast", "board game", "video game", "cafe"]
_NAMES = ["Silver Tide", "Harbor Grill", "Northern Lights", "Quiet Orchard", "Blue Lantern", "Iron Meadow"]
_POS = [
    "superb",
    "delightful",
    "charming",
    "moving",
    "clever",
    "warm",
    "generous",
    "vivid",
    "thoughtful",
    "elegant",
    "lively",
    "memorable",
]
_NEG = [
    "dull",
    "tedious",
    "bland",
    "clumsy",
    "cold",
    "shallow",
    "noisy",
    "predictable",
    "forgettable",
    "overpriced",
    "cramped",
    "slow",
]
_NOUNS = [
    "story",
    "pacing",
    "service",
    "atmosphere",
    "details",
    "staff",
    "music",
    "characters",
    "ending",
    "menu",
    "design",
    "sound",
]
_FILL = ["really", "truly", "quite", "overall", "honestly", "mostly", "clearly", "simply"]


def _sentence(rng: random.Random, adjectives: list[str], words: int) -> str:
    out = []
    while len(out) < words:
        out += [rng.choice(["The", "Its", "Every", "That"]), rng.choice(_NOUNS), "was", rng.choice(_FILL)]
        out += [rng.choice(adjectives) + ("," if rng.random() < 0.5 else ".")]
    text = " ".join(out[:words])
    return text.rstrip(",.") + "."


def synthetic_records(users: int = 4, per_user: int = 12, words: int = 28, seed: int = 0) -> list[PreferenceRecord]:
    """Reviews where each user prefers one tone; ~40-token answers, as FSPO's short completions."""
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        likes_positive = u % 2 == 0
        for q in range(per_user):
            item = f"{_KINDS[(u + q) % len(_KINDS)]} {_NAMES[(u * 7 + q) % len(_NAMES)]} {q}"
            good = _sentence(rng, _POS if likes_positive else _NEG, words)
            bad = _sentence(rng, _NEG if likes_positive else _POS, words)
            rows.append(PreferenceRecord(f"u{u}", f"Write a short review of the {item}.", good, bad))
    return rows


def bench_pairs(tokenizer, shots: int, n_pairs: int, words: int, seed: int = 0, trees: int = 0) -> list[TokenizedPair]:
    records = synthetic_records(words=words, seed=seed)
    enc = EpisodeTokenizer(tokenizer, max_length=100_000)
    if trees:  # whole trees in a seeded order, each tree's pairs together
        groups, _ = build_tree_episodes(records, shots, trees, resamples=1, seed=seed, short_users="skip")
        random.Random(seed).shuffle(groups)
        pairs, _ = enc.tokenize_all([e for g in groups for e in g])
    else:
        episodes, _ = build_episodes(records, n_shots=shots, resamples=1, seed=seed, short_users="skip")
        pairs, report = enc.tokenize_all(episodes)
        random.Random(seed).shuffle(pairs)
    assert all(p.n_shots == shots for p in pairs), "an episode lost shots"
    if len(pairs) < n_pairs:
        pairs = (pairs * (n_pairs // len(pairs) + 1))[:n_pairs]
    return pairs[:n_pairs]


def useful_tokens(pairs) -> int:
    return sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def trl_processed_tokens(pairs) -> int:
    """Tokens in TRL's padded [2B, width] batch (chosen rows then rejected rows, right-padded)."""
    width = max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs)
    return 2 * len(pairs) * width


def fspo_processed_tokens(pairs, layout: str, trees: int = 1) -> int:
    if trees > 1:
        from fspo.train.packing import collate_trees, tree_groups

        views = [p.preference_view() for p in pairs]
        return int(collate_trees(views, tree_groups(views, trees), 0).input_ids.numel())
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    return sum(lengths) if layout == "packed" else len(pairs) * max(lengths)


# ------------------------------------------------------------------ measurement helpers


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak process RSS (CPU) sampled in a thread, or CUDA max allocated, over a phase."""

    def __init__(self, device: str):
        self.device = device
        self.peak = self.base = 0
        self._stop = threading.Event()

    def __enter__(self):
        release_memory()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        import psutil

        proc = psutil.Process()
        self.base = self.peak = proc.memory_info().rss

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


def matmul_roofline(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an n×n×n torch.mm (2n³ FLOPs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class SideStats:
    seconds: list[float] = field(default_factory=list)
    useful: int = 0
    processed: int = 0
    pairs: int = 0
    peak_mb: float = 0.0
    delta_mb: float = 0.0
    rooflines: list[float] = field(default_factory=list)  # torch.mm GFLOP/s around this side's rounds

    def add(self, seconds: float, pairs, processed: int) -> None:
        self.seconds.append(seconds)
        self.useful += useful_tokens(pairs)
        self.processed += processed
        self.pairs += len(pairs)

    @property
    def total(self) -> float:
        return sum(self.seconds)

    def row(self, params: int, roofline: float) -> dict:
        gflops = 8 * params * self.processed / self.total / 1e9
        roofline = statistics.mean(self.rooflines) if self.rooflines else roofline
        return {
            "step_s": statistics.median(self.seconds),
            "tokens_per_s": self.useful / self.total,
            "pairs_per_s": self.pairs / self.total,
            "processed_tokens_per_s": self.processed / self.total,
            "gflop_per_s": gflops,
            "roofline_pct": 100 * gflops / roofline,
            "roofline_gflops": roofline,
            "peak_mem_mb": self.peak_mb,
            "step_mem_mb": self.delta_mb,
            "timed_steps": len(self.seconds),
        }


# ------------------------------------------------------------------ the two sides


class FspoSide:
    """fspo's trainer step: ``stage_loss`` (policy + reference via ``pair_logps``), backward, clip, AdamW."""

    def __init__(self, policy, ref, cfg, pad_id: int, device: str):
        self.policy, self.ref, self.cfg, self.pad_id, self.device = policy, ref, cfg, pad_id, device
        self.optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.optim.lr)
        self.segments = True  # False: the "-dense" sides (SDPA with the dense mask, no segments)

    def step(self, pairs) -> float:
        import fspo.train.packing as packing
        from fspo.train.trainer import stage_loss

        packing.SEGMENT_ATTENTION = self.segments
        sync(self.device)
        t = time.perf_counter()
        loss, _, _ = stage_loss("ipo", self.policy, self.ref, pairs, self.cfg, self.pad_id, self.device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t

    def run_round(self, batches, stats: SideStats, warmup: int, layout: str) -> None:
        self.policy.train()
        trees = self.cfg.data.queries_per_tree
        with PeakMemory(self.device) as mem:
            for i, pairs in enumerate(batches):
                seconds = self.step(pairs)
                if i >= warmup:
                    stats.add(seconds, pairs, fspo_processed_tokens(pairs, layout, trees))
        stats.peak_mb = max(stats.peak_mb, mem.peak / 2**20)
        stats.delta_mb = max(stats.delta_mb, (mem.peak - mem.base) / 2**20)


class TrlSide:
    """TRL's DPOTrainer (loss_type ipo), one ``train()`` per round; steps timed by a callback."""

    def __init__(self, policy, ref, tokenizer, args_ns, out_dir: str):
        from transformers import TrainerCallback
        from trl import DPOConfig, DPOTrainer

        side = self

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                sync(args_ns.device)
                side._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                sync(args_ns.device)
                side.step_seconds.append(time.perf_counter() - side._t)

        class PreTokenizedDPOTrainer(DPOTrainer):
            # TRL always re-tokenizes text in _prepare_dataset; our rows are already in its tokenized
            # schema (prompt_ids/chosen_ids/rejected_ids), so both sides see identical token ids.
            def _prepare_dataset(self, dataset, *a, **k):
                return dataset

            def _get_train_sampler(self, *a, **k):  # the same batch order as the fspo side
                return torch.utils.data.SequentialSampler(self.train_dataset)

        self.step_seconds: list[float] = []
        self.device = args_ns.device
        bf16 = args_ns.dtype == "bfloat16"
        self.config = DPOConfig(
            output_dir=out_dir,
            bf16=bf16,
            fp16=False,
            gradient_checkpointing=False,
            use_cpu=args_ns.device == "cpu",
            report_to=[],
            loss_type="ipo",
            beta=args_ns.beta,
            max_length=None,
            per_device_train_batch_size=args_ns.trl_batch_size or args_ns.batch_size,
            learning_rate=args_ns.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            optim="adamw_torch",
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=1,
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            dataset_num_proc=None,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )
        from datasets import Dataset

        self._Dataset = Dataset
        self.trainer = PreTokenizedDPOTrainer(
            model=policy,
            ref_model=ref,
            args=self.config,
            train_dataset=self._dataset([[]]),
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
        from transformers.trainer_callback import PrinterCallback

        self.trainer.remove_callback(PrinterCallback)

    def _dataset(self, batches):
        rows = [
            {"prompt_ids": list(p.prompt_ids), "chosen_ids": list(p.chosen_ids), "rejected_ids": list(p.rejected_ids)}
            for pairs in batches
            for p in pairs
        ] or [{"prompt_ids": [0], "chosen_ids": [0], "rejected_ids": [0]}]
        return self._Dataset.from_list(rows)

    def run_round(self, batches, stats: SideStats, warmup: int) -> None:
        self.trainer.train_dataset = self._dataset(batches)
        self.trainer.args.max_steps = len(batches)
        self.step_seconds = []
        with PeakMemory(self.device) as mem:
            self.trainer.train()
        assert len(self.step_seconds) == len(batches), (len(self.step_seconds), len(batches))
        for i, (seconds, pairs) in enumerate(zip(self.step_seconds, batches)):
            if i >= warmup:
                stats.add(seconds, pairs, trl_processed_tokens(pairs))
        stats.peak_mb = max(stats.peak_mb, mem.peak / 2**20)
        stats.delta_mb = max(stats.delta_mb, (mem.peak - mem.base) / 2**20)


# ------------------------------------------------------------------ main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | local HF folder")
    ap.add_argument(
        "--shots", default="0,2,4,8", help="comma-separated shot counts (the last one gives speedup_vs_trl)"
    )
    ap.add_argument("--rounds", type=int, default=2, help="alternating fspo/TRL rounds per shot count")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per side per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps at the start of every round")
    ap.add_argument("--batch-size", type=int, default=2, help="pairs per step (both sides)")
    ap.add_argument(
        "--trl-batch-size",
        type=int,
        default=None,
        help="TRL's pairs per step, when its memory does not fit --batch-size (default: --batch-size): TRL then "
        "runs the same pairs in smaller steps, and pairs/s compares the two rates",
    )
    ap.add_argument("--words", type=int, default=28, help="words per synthetic answer (~1.4 tokens per word)")
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--layout", default="rows", choices=["rows", "packed"], help="fspo shared-prefix layout")
    ap.add_argument(
        "--sides",
        default=None,
        help="any of fspo, fspo-trees, fspo-naive (separate rows), trl, and fspo-dense, fspo-trees-dense (SDPA "
        "with the dense mask instead of segments) (default: fspo,trl; with --trees fspo-trees,fspo,trl)",
    )
    ap.add_argument("--trees", type=int, default=0, help="K > 1: pairs from shared-shot trees of K queries (see above)")
    ap.add_argument("--grad-ckpt", action="store_true", help="also measure fspo with gradient checkpointing")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="bfloat16: GPUs only")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the results here")
    return ap.parse_args(argv)


def rebatch(batches: list[list], size: int | None) -> list[list]:
    """The same pairs in the same order, ``size`` per step (None: unchanged)."""
    if not size:
        return batches
    flat = [p for b in batches for p in b]
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def load_pair_of_models(spec: str, dtype: str, device: str):
    from fspo.models.registry import load_model

    policy, tok = load_model(spec, dtype)
    ref, _ = load_model(spec, dtype)
    ref.requires_grad_(False).eval()
    policy.config.use_cache = False
    return policy.to(device), ref.to(device), tok


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from fspo.models.registry import load_tokenizer
    from fspo.train.config import TrainConfig

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    shots_list = [int(s) for s in args.shots.split(",")]
    sides = (args.sides or ("fspo-trees,fspo,trl" if args.trees > 1 else "fspo,trl")).split(",")
    if any(s.startswith("fspo-trees") for s in sides) and args.trees < 2:
        raise SystemExit("the fspo-trees side needs --trees K (K >= 2)")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device_name}; dtype {args.dtype}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    roofline = matmul_roofline(args.device, dtype)
    print(
        f"matmul roofline (torch.mm 2048^3, {args.dtype}): {roofline:.1f} GFLOP/s at the start (%roof uses each side's own)"
    )

    tok = load_tokenizer(args.model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    models = {s: load_pair_of_models(args.model, args.dtype, args.device)[:2] for s in sides}
    params = sum(p.numel() for p in next(iter(models.values()))[0].parameters())
    print(
        f"model {args.model}: {params / 1e6:.1f} M parameters; batch {args.batch_size} pairs"
        + (f" (TRL: {args.trl_batch_size})" if args.trl_batch_size else "")
        + f"; IPO (mean), beta {args.beta}"
    )

    runners = {}
    for s in sides:
        cfg = TrainConfig()
        cfg.loss.reduction, cfg.loss.beta, cfg.optim.lr = "mean", args.beta, args.lr
        kind = s.removesuffix("-dense")
        cfg.optim.shared_prefix = kind in ("fspo", "fspo-trees")
        if kind == "fspo-trees":
            cfg.data.queries_per_tree = args.trees
        if kind in ("fspo", "fspo-naive", "fspo-trees") and (kind == s or kind != "fspo-naive"):
            runners[s] = FspoSide(*models[s], cfg, pad_id, args.device)
            runners[s].segments = kind == s
        elif s == "trl":
            import tempfile

            runners[s] = TrlSide(*models[s], tok, args, tempfile.mkdtemp(prefix="fspo-bench-trl-"))
        else:
            raise SystemExit(f"unknown side {s!r}")
    if "fspo" in runners:
        import functools

        import fspo.train.packing as packing

        packing.packed_pair_logps = functools.partial(packing.packed_pair_logps, layout=args.layout)

    per_round = args.warmup + args.steps
    results = []
    header = f"{'shots':>5} {'tok/pair':>8} {'side':>10} {'step s':>7} {'tok/s':>7} {'pairs/s':>7} {'GFLOP/s':>7} {'%roof':>6} {'roof':>5} {'peak MB':>8} {'step MB':>8}"
    for shots in shots_list:
        pairs = bench_pairs(tok, shots, args.batch_size * per_round * args.rounds, args.words, trees=args.trees)
        batches = [pairs[i : i + args.batch_size] for i in range(0, len(pairs), args.batch_size)]
        mean_tok = useful_tokens(pairs) / len(pairs)
        mean_prompt = sum(len(p.prompt_ids) for p in pairs) / len(pairs)
        print(
            f"\n{shots} shots: {mean_tok:.0f} useful tokens per pair (prompt {mean_prompt:.0f}); rounds {args.rounds}"
        )
        stats = {s: SideStats() for s in sides}
        for r in range(args.rounds):
            round_batches = batches[r * per_round : (r + 1) * per_round]
            order = sides if r % 2 == 0 else sides[::-1]
            for s in order:
                stats[s].rooflines.append(matmul_roofline(args.device, dtype, repeats=3))
                t = time.perf_counter()
                if s == "trl":
                    runners[s].run_round(rebatch(round_batches, args.trl_batch_size), stats[s], args.warmup)
                else:
                    runners[s].run_round(
                        round_batches,
                        stats[s],
                        args.warmup,
                        args.layout if s.removesuffix("-dense") == "fspo" else "rows",
                    )
                took = time.perf_counter() - t
                stats[s].rooflines.append(matmul_roofline(args.device, dtype, repeats=3))
                print(
                    f"  round {r + 1} {s}: {took:.1f} s (torch.mm {stats[s].rooflines[-2]:.0f} -> "
                    f"{stats[s].rooflines[-1]:.0f} GFLOP/s)",
                    flush=True,
                )
        print(header)
        row = {"shots": shots, "tokens_per_pair": mean_tok, "prompt_tokens": mean_prompt}
        for s in sides:
            res = stats[s].row(params, roofline)
            row[s] = res
            print(
                f"{shots:>5} {mean_tok:>8.0f} {s:>10} {res['step_s']:>7.2f} {res['tokens_per_s']:>7.1f} "
                f"{res['pairs_per_s']:>7.3f} {res['gflop_per_s']:>7.1f} {res['roofline_pct']:>6.1f} {res['roofline_gflops']:>5.0f} "
                f"{res['peak_mem_mb']:>8.0f} {res['step_mem_mb']:>8.0f}"
            )
        if "fspo" in sides and "trl" in sides:
            row["speedup_vs_trl"] = row["fspo"]["pairs_per_s"] / row["trl"]["pairs_per_s"]
            print(f"  speedup fspo vs TRL at {shots} shots: {row['speedup_vs_trl']:.2f}x", flush=True)
        if "fspo-trees" in sides and "trl" in sides:
            row["speedup_vs_trl_shared_prefix"] = row.get("speedup_vs_trl")
            row["speedup_vs_trl_trees"] = row["fspo-trees"]["pairs_per_s"] / row["trl"]["pairs_per_s"]
            row["speedup_vs_trl"] = row["speedup_vs_trl_trees"]
            print(f"  speedup fspo-trees vs TRL at {shots} shots: {row['speedup_vs_trl_trees']:.2f}x", flush=True)
        for s in sides:
            if s.endswith("-dense") and s.removesuffix("-dense") in sides:
                key = f"segments_vs_dense_{s.removesuffix('-dense').replace('-', '_')}"
                row[key] = row[s.removesuffix("-dense")]["pairs_per_s"] / row[s]["pairs_per_s"]
                print(f"  {key}={row[key]:.2f}", flush=True)
        results.append(row)

    gc_result = None
    if args.grad_ckpt and "fspo" in runners:
        gc_result = grad_ckpt_cost(runners["fspo"], tok, shots_list[-1], args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "device": device_name,
                    "roofline_gflops": roofline,
                    "params": params,
                    "results": results,
                    "grad_ckpt": gc_result,
                },
                f,
                indent=2,
            )
    final = [r for r in results if "speedup_vs_trl" in r]
    if final:
        last = final[-1]
        for key in ("speedup_vs_trl_shared_prefix", "speedup_vs_trl_trees"):
            if last.get(key) is not None:
                print(f"{key}={last[key]:.2f}")
        print(f"speedup_vs_trl={last['speedup_vs_trl']:.2f}")


def grad_ckpt_cost(side: FspoSide, tok, shots: int, args) -> dict:
    """fspo at ``shots``: the same steps without and with gradient checkpointing, alternated."""
    per_round = args.warmup + args.steps
    pairs = bench_pairs(tok, shots, args.batch_size * per_round, args.words, seed=1)
    batches = [pairs[i : i + args.batch_size] for i in range(0, len(pairs), args.batch_size)]
    out = {}
    print(f"\ngradient checkpointing, fspo, {shots} shots ({args.steps} timed steps each)")
    for mode in ("off", "on", "off"):
        if mode == "on":
            side.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            side.policy.gradient_checkpointing_disable()
        stats = SideStats()
        side.run_round(batches, stats, args.warmup, args.layout)
        res = stats.row(1, 1)
        prev = out.get(mode)
        if prev is None or res["step_s"] < prev["step_s"]:
            out[mode] = res
    side.policy.gradient_checkpointing_disable()
    for mode in ("off", "on"):
        print(
            f"  grad-ckpt {mode:>3}: step {out[mode]['step_s']:.2f} s, peak RSS {out[mode]['peak_mem_mb']:.0f} MB, step memory {out[mode]['step_mem_mb']:.0f} MB"
        )
    out["time_cost_pct"] = 100 * (out["on"]["step_s"] / out["off"]["step_s"] - 1)
    out["memory_saved_mb"] = out["off"]["step_mem_mb"] - out["on"]["step_mem_mb"]
    print(f"  grad-ckpt: {out['time_cost_pct']:+.0f}% step time, {out['memory_saved_mb']:.0f} MB less step memory")
    return out


if __name__ == "__main__":
    sys.exit(main())
