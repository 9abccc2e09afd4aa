"""Attention with a tree mask on this CPU: SDPA with an additive float mask, SDPA with a boolean mask,
fspo's segments (one SDPA call per segment over the keys it may see, no dense mask:
``fspo.train.segments``), and torch's flex_attention with a block mask (eager and torch.compile'd):
forward, and forward + backward where the kernel has one (flex_attention has no CPU backward in
torch 2.13).

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


def branch_lengths(queries: int, branch: int) -> list[tuple[int, int, int]]:
    """(prompt rest, chosen, rejected) per branch, as :func:`tree_tags` splits them."""
    q = min(20, branch)
    c = (branch - q) // 2
    return [(q, c, branch - q - c)] * queries


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

    def run(attend, backward: bool):
        def go():
            for _ in range(args.layers):
                if backward:
                    attend().backward(grad)
                else:
                    with torch.no_grad():
                        attend()
            q.grad = k.grad = v.grad = None

        return go

    def sdpa(mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    results = {}  # (name, pass) -> best seconds
    for name, mask in (("sdpa_additive", add_mask), ("sdpa_bool", bool_mask)):
        for backward in (False, True):
            results[(name, "fwd+bwd" if backward else "fwd")] = best(
                run(lambda m=mask: sdpa(m), backward), args.repeats
            )
    from fspo.train.segments import SegmentPlan, segment_attention, tree_segments

    plan = SegmentPlan([tree_segments(args.trunk, branch_lengths(args.queries, args.branch))] * args.rows)
    for backward in (False, True):
        results[("segments", "fwd+bwd" if backward else "fwd")] = best(
            run(lambda: segment_attention(q, k, v, plan, None), backward), args.repeats
        )
    with torch.no_grad():
        ref = sdpa(add_mask)
        err_bool = float((sdpa(bool_mask) - ref).abs().max())
        err_seg = float((segment_attention(q, k, v, plan, None) - ref).abs().max())
    print(f"max |sdpa bool - sdpa additive| = {err_bool:.2e}; max |segments - sdpa additive| = {err_seg:.2e}")

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, qi, ki):
        bq, bk = br[qi], br[ki]
        vis = (bk == -1) | ((bq == bk) & ~((part[qi] == 2) & (part[ki] == 1)))
        return (ki <= qi) & vis

    t = time.perf_counter()
    block = create_block_mask(mask_mod, args.rows, None, n, n, device="cpu")
    print(f"flex block mask: built in {time.perf_counter() - t:.2f} s; " + str(block).splitlines()[0])
    try:
        flex_attention(q, k, v, block_mask=block, enable_gqa=True).sum().backward()
        print("flex_attention backward on CPU: works")
    except NotImplementedError as exc:
        print(f"flex_attention backward on CPU: {str(exc).splitlines()[0]}")
    q.grad = k.grad = v.grad = None
    qd, kd, vd = q.detach(), k.detach(), v.detach()  # flex_attention refuses CPU inputs that require grad
    with torch.no_grad():
        err = float((flex_attention(qd, kd, vd, block_mask=block, enable_gqa=True) - ref).abs().max())
    results[("flex_eager", "fwd")] = best(
        run(lambda: flex_attention(qd, kd, vd, block_mask=block, enable_gqa=True), False), args.repeats
    )
    if not args.no_compile:
        compiled = torch.compile(flex_attention, dynamic=False)
        t = time.perf_counter()
        try:
            with torch.no_grad():
                out = compiled(qd, kd, vd, block_mask=block, enable_gqa=True)
            print(f"flex_attention compiled (forward) in {time.perf_counter() - t:.1f} s")
            err = max(err, float((out - ref).abs().max()))
            results[("flex_compiled", "fwd")] = best(
                run(lambda: compiled(qd, kd, vd, block_mask=block, enable_gqa=True), False), args.repeats
            )
        except Exception as exc:  # no C++ toolchain, or an inductor CPU limitation
            print(f"flex_attention compiled: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    print(f"max |flex - sdpa additive| (forward) = {err:.2e}")
    for kind in ("fwd", "fwd+bwd"):
        base = results[("sdpa_additive", kind)]
        for (name, k2), sec in results.items():
            if k2 == kind:
                print(
                    f"{kind:>7} {name:>14}: {sec / args.layers * 1e3:8.1f} ms per attention call, "
                    f"{base / sec:5.2f}x additive"
                )
        fastest = min((key for key in results if key[1] == kind), key=results.get)
        print(f"fastest_{kind.replace('+', '_')}={fastest[0]}")


if __name__ == "__main__":
    main()
