"""Warm vs cold latency of one personalized generation: does the per-user prefix cache pay off?

One user with an N-shot context asks short questions. Cold = no cache (the whole prompt is
encoded); warm = the user's cached few-shot prefix is reused and only the question is encoded.
Cold and warm runs alternate in one process so drift affects both equally.

    python bench/serve_latency.py                 # embedded SmolLM2-135M
    python bench/serve_latency.py --model tiny    # seconds, for a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

from fspo.data.runs import resolve_model
from fspo.data.schema import PreferenceRecord
from fspo.llm.base import GenerationParams
from fspo.serve.personalize import Engine

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
QUESTIONS = ["Review the new cafe downtown.", "Describe your ideal weekend.", "Recommend a book for a trip."]


def make_shots(n: int) -> list[PreferenceRecord]:
    out = []
    for i in range(n):
        q, good, bad = SHOT_TEMPLATES[i % len(SHOT_TEMPLATES)]
        topic = TOPICS[i % len(TOPICS)]
        out.append(PreferenceRecord("bench", q.format(topic), good.format(topic), bad.format(topic)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    info = resolve_model(args.model).with_prompting(n_shots=args.shots)
    t0 = time.perf_counter()
    engine = Engine.load(info)
    print(f"model={args.model} load_s={time.perf_counter() - t0:.2f} shots={args.shots} new_tokens={args.new_tokens}")
    shots = make_shots(args.shots)
    # min_new_tokens-like behaviour: no stop on EOS would be ideal; we report generated counts instead.
    params = GenerationParams(max_new_tokens=args.new_tokens)
    engine.generate("bench", shots, QUESTIONS[0], params)  # warm up kernels and fill the user's cache
    cold, warm, tokens = [], [], []
    for r in range(args.repeats):
        q = QUESTIONS[r % len(QUESTIONS)]
        c = engine.generate("bench", shots, q, params, use_cache=False)
        w = engine.generate("bench", shots, q, params)
        assert w.cached_tokens > 0, "the warm run missed the cache"
        assert c.raw == w.raw, "cached and uncached greedy outputs differ"
        cold.append(c.seconds)
        warm.append(w.seconds)
        tokens.append((c.prompt_tokens, w.cached_tokens, c.completion_tokens))
        print(
            f"repeat {r}: prompt_tokens={c.prompt_tokens} cached={w.cached_tokens} new={c.completion_tokens} "
            f"cold_s={c.seconds:.3f} warm_s={w.seconds:.3f}"
        )
    cold_med, warm_med = statistics.median(cold), statistics.median(warm)
    print(f"cold_median_s={cold_med:.3f} warm_median_s={warm_med:.3f}")
    print(f"warm_cold_latency_ratio={warm_med / cold_med:.2f}")


if __name__ == "__main__":
    main()
