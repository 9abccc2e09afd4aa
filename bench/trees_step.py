"""Policy forward + backward of one batch, shared prefix vs shared-shot trees, alternated (the 8-shot
pairs of bench/train_throughput.py, trees of K = 2 and 4, batches of K pairs, three batches each).

    python bench/trees_step.py
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from train_throughput import bench_pairs  # noqa: E402

from fspo.models.registry import load_model  # noqa: E402
from fspo.train.batching import pair_logps  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    model, tok = load_model("smollm2")
    model.train()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for k in (2, 4):
        pairs = bench_pairs(tok, 8, k * 3, 28, trees=k)
        batches = [pairs[i : i + k] for i in range(0, len(pairs), k)]
        res: dict[str, list[float]] = {"shared": [], "trees": []}
        for b in batches:
            sides = (("shared", 1), ("trees", k)) if len(res["shared"]) % 2 == 0 else (("trees", k), ("shared", 1))
            for name, q in sides:
                t = time.perf_counter()
                c, r = pair_logps(model, b, pad, "mean", "cpu", True, q)
                (c.sum() + r.sum()).backward()
                model.zero_grad(set_to_none=True)
                res[name].append(time.perf_counter() - t)
        shown = "; ".join(f"{n} {[f'{x:.2f}' for x in v]}" for n, v in res.items())
        print(f"K={k}: batch of {k} pairs, fwd+bwd of the policy: {shown}", flush=True)


if __name__ == "__main__":
    main()
