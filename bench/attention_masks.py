"""Attention with a tree mask on this CPU: SDPA with an additive float mask, SDPA with a boolean mask,
and torch's flex_attention with a block mask (eager and torch.compile'd), forward + backward.

The shape is SmolLM2-135M's attention (9 query heads, 3 key/value heads, head dim 64) over one
8-shot tree row: a trunk of ``--trunk`` tokens, then ``--queries`` branches of ``--branch`` tokens
(query rest + chosen + rejected). ``--layers`` calls are timed per repetition (the model has 30), best
of ``--repeats``.

    python bench/attention_masks.py                       # trunk 930, 4 branches of 120
    python bench/attention_masks.py --queries 1 --branch 120   # one pair (shared-prefix row)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def tree_tags(trunk: int, queries: int, branch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch id (-1 trunk) and part (0 prompt, 1 chosen, 2 rejected) per token; each branch is
    20 prompt tokens, then half the rest chosen and half rejected."""
    br, part = [-1] * trunk, [0] * trunk
    for b in range(queries):
        q = min(20, branch)
        c = (branch - q) // 2
        r = branch - q - c
        br += [b] * branch
        part += [0] * q + [1] * c + [2] * r
    return torch.tensor(br), torch.tensor(part)


def dense_allowed(br: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    n = len(br)
    i = torch.arange(n)
    causal = i[None, :] <= i[:, None]
    vis = (br[None, :] == -1) | ((br[:, None] == br[None, :]) & ~((part[:, None] == 2) & (part[None, :] == 1)))
    return causal & vis


def best(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    out = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trunk", type=int, default=930)
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--branch", type=int, default=120)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled flex_attention")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    br, part = tree_tags(args.trunk, args.queries, args.branch)
    n = len(br)
    allowed = dense_allowed(br, part)
    heads, kv_heads, dim = 9, 3, 64
    shape = (args.rows, heads, n, dim)
    q = torch.randn(shape, requires_grad=True)
    k = torch.randn(args.rows, kv_heads, n, dim, requires_grad=True)
    v = torch.randn(args.rows, kv_heads, n, dim, requires_grad=True)
    grad = torch.randn(shape)
    bool_mask = allowed[None, None].expand(args.rows, 1, n, n)
    add_mask = torch.zeros(args.rows, 1, n, n).masked_fill_(~bool_mask, torch.finfo(torch.float32).min)
    print(
        f"torch {torch.__version__}; threads {torch.get_num_threads()}; tree: trunk {args.trunk} + "
        f"{args.queries} x {args.branch} = {n} tokens, {args.rows} row(s); allowed {allowed.float().mean():.1%} "
        f"of the L^2 scores; {args.layers} attention calls (fwd+bwd) per timing, best of {args.repeats}"
    )

    def run(attend):
        def go():
            for _ in range(args.layers):
                out = attend()
                out.backward(grad)
            q.grad = k.grad = v.grad = None

        return go

    results = {}

    def sdpa(mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    results["sdpa_additive"] = best(run(lambda: sdpa(add_mask)), args.repeats)
    results["sdpa_bool"] = best(run(lambda: sdpa(bool_mask)), args.repeats)
    ref = sdpa(add_mask).detach()

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, qi, ki):
        bq, bk = br[qi], br[ki]
        vis = (bk == -1) | ((bq == bk) & ~((part[qi] == 2) & (part[ki] == 1)))
        return (ki <= qi) & vis

    t = time.perf_counter()
    block = create_block_mask(mask_mod, args.rows, None, n, n, device="cpu")
    build_s = time.perf_counter() - t
    print(f"block mask: built in {build_s:.2f} s; {block}".splitlines()[0])
    flex_out = flex_attention(q, k, v, block_mask=block, enable_gqa=True).detach()
    err = float((flex_out - ref).abs().max())
    results["flex_eager"] = best(run(lambda: flex_attention(q, k, v, block_mask=block, enable_gqa=True)), args.repeats)
    if not args.no_compile:
        compiled = torch.compile(flex_attention, dynamic=False)
        t = time.perf_counter()
        try:
            compiled(q, k, v, block_mask=block, enable_gqa=True).sum().backward()
            print(f"flex_attention compiled in {time.perf_counter() - t:.1f} s")
            results["flex_compiled"] = best(
                run(lambda: compiled(q, k, v, block_mask=block, enable_gqa=True)), args.repeats
            )
            err = max(err, float((compiled(q, k, v, block_mask=block, enable_gqa=True).detach() - ref).abs().max()))
        except Exception as exc:  # no C++ toolchain, or an inductor CPU limitation
            print(f"flex_attention compiled: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    print(f"max |flex - sdpa| = {err:.2e}")
    base = results["sdpa_additive"]
    for name, s in results.items():
        print(f"{name:>14}: {s / args.layers * 1e3:8.1f} ms per attention call (fwd+bwd), {base / s:5.2f}x additive")
    fastest = min(results, key=results.get)
    print(f"fastest={fastest}")


if __name__ == "__main__":
    main()
