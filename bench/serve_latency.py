"""Serving latency and throughput: the per-user prefix cache (time to first token, warm vs cold)
and batching (concurrent clients vs one at a time).

1. Time to first token (TTFT) for one user with an N-shot context: cold = no cache (the whole
   prompt is tokenized and prefilled); warm = the user's cached few-shot prefix is reused, so only
   the question is tokenized and prefilled. Cold and warm requests alternate in one process so
   drift affects both equally. TTFT counts from the call (prompt rendering included) to the first
   sampled token; the time to the first streamed text piece and the whole answer are shown too.
2. Concurrency: ``--clients`` users (N shots each, prefixes warm: a server's steady state) each
   send ``--requests`` greedy questions. Sequential = the same requests one at a time; concurrent
   = one thread per client, all at once, so the engine batches them. Both orders run twice,
   alternating; greedy outputs must be identical in both, so the tokens generated are the same and
   the throughput ratio is the wall-time ratio. The concurrent run is repeated with every admitted
   question prefilled alone (the scheduler's ``group_prefill`` off), alternating which goes first,
   to measure what prefilling the questions of requests admitted together in one forward gains.

    python bench/serve_latency.py                 # embedded SmolLM2-135M
    python bench/serve_latency.py --model tiny    # seconds, for a smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import threading
import time

from fspo.data.runs import resolve_model
from fspo.data.schema import PreferenceRecord
from fspo.llm.base import GenerationParams
from fspo.serve.personalize import Engine, Personalized

SHOT_TEMPLATES = [
    (
        "Write a short review of a {} you tried recently.",
        "I loved the {}: warm, generous and full of surprises. "
        "Everything about it felt considered, and I left smiling.",
        "The {} was fine, I guess. Nothing stood out.",
    ),
    (
        "How would you describe a good {} to a friend?",
        "A good {} is simple, honest and easy to enjoy; you notice the care in the small details.",
        "It depends. Some are good, some are bad, it is hard to say.",
    ),
]
TOPICS = ["restaurant", "film", "novel", "album", "hotel", "museum", "bakery", "podcast", "park", "game"]
QUESTIONS = [
    "Review the new cafe downtown.",
    "Describe your ideal weekend.",
    "Recommend a book for a trip.",
    "What should I cook tonight?",
    "Suggest a film for a rainy day.",
]


def make_shots(n: int, user: str = "bench", offset: int = 0) -> list[PreferenceRecord]:
    out = []
    for i in range(n):
        q, good, bad = SHOT_TEMPLATES[(i + offset) % len(SHOT_TEMPLATES)]
        topic = TOPICS[(i + offset) % len(TOPICS)]
        out.append(PreferenceRecord(user, q.format(topic), good.format(topic), bad.format(topic)))
    return out


def p95(xs: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    return sorted(xs)[max(0, math.ceil(0.95 * len(xs)) - 1)]


def timed_stream(engine: Engine, user: str, shots, question: str, params, use_cache: bool):
    """(result, seconds to the first streamed text piece)."""
    start = time.perf_counter()
    first = None
    for item in engine.stream(user, shots, question, params, use_cache=use_cache):
        if isinstance(item, str) and first is None:
            first = time.perf_counter() - start
        if isinstance(item, Personalized):
            return item, first if first is not None else time.perf_counter() - start
    raise AssertionError("the stream ended without a result")


def ttft(engine: Engine, args) -> None:
    shots = make_shots(args.shots)
    params = GenerationParams(max_new_tokens=args.new_tokens)
    engine.generate("bench", shots, QUESTIONS[0], params)  # warm up kernels and fill the user's cache
    rows = {"cold": [], "warm": []}
    for r in range(args.repeats):
        q = QUESTIONS[r % len(QUESTIONS)]
        c, c_piece = timed_stream(engine, "bench", shots, q, params, use_cache=False)
        w, w_piece = timed_stream(engine, "bench", shots, q, params, use_cache=True)
        assert w.cached_tokens > 0, "the warm run missed the cache"
        assert c.raw == w.raw, "cached and uncached greedy outputs differ"
        rows["cold"].append((c.first_token_seconds, c_piece, c.seconds))
        rows["warm"].append((w.first_token_seconds, w_piece, w.seconds))
        print(
            f"repeat {r}: prompt_tokens={c.prompt_tokens} cached={w.cached_tokens} new={c.completion_tokens} "
            f"cold_ttft_s={c.first_token_seconds:.3f} warm_ttft_s={w.first_token_seconds:.3f} "
            f"cold_first_piece_s={c_piece:.3f} warm_first_piece_s={w_piece:.3f} "
            f"cold_s={c.seconds:.3f} warm_s={w.seconds:.3f}"
        )
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in rows.items()}
    print(f"cold_median: ttft_s={med['cold'][0]:.3f} first_piece_s={med['cold'][1]:.3f} total_s={med['cold'][2]:.3f}")
    print(f"warm_median: ttft_s={med['warm'][0]:.3f} first_piece_s={med['warm'][1]:.3f} total_s={med['warm'][2]:.3f}")
    print(f"warm_cold_ttft_ratio={med['warm'][0] / med['cold'][0]:.3f}")
    print(f"warm_cold_first_piece_ratio={med['warm'][1] / med['cold'][1]:.3f}")
    print(f"warm_cold_latency_ratio={med['warm'][2] / med['cold'][2]:.3f}")


def concurrency(engine: Engine, args) -> None:
    params = GenerationParams(max_new_tokens=args.concurrent_new_tokens)
    users = {f"client{c}": make_shots(args.shots, f"client{c}", offset=c) for c in range(args.clients)}
    work = [(u, QUESTIONS[(c + r) % len(QUESTIONS)]) for r in range(args.requests) for c, u in enumerate(users)]
    for u, s in users.items():  # warm every user's prefix (the same budget, so the same shots fit)
        engine.generate(u, s, QUESTIONS[-1], params)

    def one(u: str, q: str) -> Personalized:
        return engine.generate(u, users[u], q, params)

    def sequential():
        start = time.perf_counter()
        outs = [one(u, q) for u, q in work]
        return time.perf_counter() - start, outs

    def concurrent():
        outs: list[Personalized | None] = [None] * len(work)
        barrier = threading.Barrier(args.clients)

        def client(c: int) -> None:
            barrier.wait()
            for i in range(c, len(work), args.clients):
                outs[i] = one(*work[i])

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start, outs

    seq_s, conc_s, seq_lat, conc_lat, conc_ttft, reference = [], [], [], [], [], None
    alone_s, alone_ttft = [], []  # the concurrent run with every admitted question prefilled alone
    for rnd in range(args.rounds):
        engine.batcher.max_rows_seen = 0
        s_s, s_out = sequential()
        runs = {}
        for grouped in (True, False) if rnd % 2 == 0 else (False, True):
            engine.batcher.group_prefill = grouped
            prefills = engine.batcher.prefills
            runs[grouped] = (*concurrent(), engine.batcher.prefills - prefills)
        engine.batcher.group_prefill = True
        (c_s, c_out, prefills), (a_s, a_out, a_prefills) = runs[True], runs[False]
        reference = reference or [o.raw for o in s_out]
        for outs in (s_out, c_out, a_out):
            assert [o.raw for o in outs] == reference, "batched greedy outputs differ"
        hits = sum(o.cached_tokens > 0 for o in s_out + c_out)
        tokens = sum(o.completion_tokens for o in s_out)
        seq_s.append(s_s)
        conc_s.append(c_s)
        alone_s.append(a_s)
        seq_lat += [o.seconds for o in s_out]
        conc_lat += [o.seconds for o in c_out]
        conc_ttft += [o.first_token_seconds for o in c_out]
        alone_ttft += [o.first_token_seconds for o in a_out]
        print(
            f"round {rnd}: requests={len(work)} new_tokens={tokens} sequential_s={s_s:.2f} concurrent_s={c_s:.2f} "
            f"ratio={s_s / c_s:.2f} max_batch_seen={engine.batcher.max_rows_seen} prefix_hits={hits}/{2 * len(work)} "
            f"prefill_forwards={prefills}; questions prefilled alone: concurrent_s={a_s:.2f} "
            f"ratio={s_s / a_s:.2f} prefill_forwards={a_prefills}"
        )
    seq, conc, alone = statistics.median(seq_s), statistics.median(conc_s), statistics.median(alone_s)
    print(
        f"concurrency: clients={args.clients} requests={len(work)} new_tokens={tokens} "
        f"sequential_tok_s={tokens / seq:.1f} concurrent_tok_s={tokens / conc:.1f} "
        f"throughput_ratio={seq / conc:.2f} "
        f"p95_latency_s={p95(conc_lat):.2f} (one at a time: {p95(seq_lat):.2f}) "
        f"p95_ttft_s={p95(conc_ttft):.2f}"
    )
    print(
        f"prefill_together: throughput_ratio={seq / conc:.2f} vs {seq / alone:.2f} with questions prefilled alone; "
        f"p95_ttft_s={p95(conc_ttft):.2f} vs {p95(alone_ttft):.2f}; median_ttft_s="
        f"{statistics.median(conc_ttft):.2f} vs {statistics.median(alone_ttft):.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16, help="per request in the TTFT section")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="per client in the concurrency section")
    ap.add_argument("--concurrent-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-concurrency", action="store_true")
    args = ap.parse_args()

    info = resolve_model(args.model).with_prompting(n_shots=args.shots)
    t0 = time.perf_counter()
    engine = Engine.load(info, cache_users=max(32, args.clients + 1))
    print(
        f"model={args.model} load_s={time.perf_counter() - t0:.2f} shots={args.shots} new_tokens={args.new_tokens} "
        f"loadavg_at_start={os.getloadavg()[0]:.2f} cpus={os.cpu_count()}"
    )
    ttft(engine, args)
    if not args.skip_concurrency:
        concurrency(engine, args)
    print(f"loadavg_at_end={os.getloadavg()[0]:.2f}")
    engine.close()


if __name__ == "__main__":
    main()
