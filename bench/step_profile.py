"""Where one fspo training step's time goes: torch profiler over one shared-shot trees step
(the trainer's ``stage_loss``, backward, clipping, AdamW: ``bench/train_throughput.py``'s fspo side),
the biggest ops by self CPU time.

    python bench/step_profile.py                      # 8 shots, trees of 4, batch 4, segments
    python bench/step_profile.py --dense              # the same with SDPA's dense mask
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    import train_throughput as tt
    from torch.profiler import ProfilerActivity, profile

    import fspo.train.packing as packing
    from fspo.models.registry import load_tokenizer
    from fspo.train.config import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--trees", type=int, default=4, help="queries per tree (1: shared-prefix rows)")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--dense", action="store_true", help="SDPA with the dense mask instead of segments")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=25, help="ops to list")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = load_tokenizer("smollm2")
    pairs = tt.bench_pairs(tok, args.shots, 3 * args.batch_size, 28, trees=args.trees)
    policy, ref = tt.load_pair_of_models("smollm2", "float32", "cpu")[:2]
    cfg = TrainConfig()
    cfg.loss.reduction, cfg.loss.beta = "mean", 0.1
    cfg.optim.shared_prefix = True
    cfg.data.queries_per_tree = args.trees
    side = tt.FspoSide(policy, ref, cfg, tok.pad_token_id, "cpu")
    side.segments = packing.SEGMENT_ATTENTION = not args.dense
    b = args.batch_size
    side.step(pairs[:b])  # warm-up
    t = time.perf_counter()
    side.step(pairs[b : 2 * b])
    print(f"one step without the profiler: {time.perf_counter() - t:.2f} s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        side.step(pairs[2 * b : 3 * b])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
