"""Evaluation queries, lazily loaded models, and cached personalized generations per method.

Every method answers the *same* queries with the *same* shots (seeded episodes), so differences
between rows come from the method, not from the sample. Calls go through the content-addressed
cache (:mod:`fspo.llm.cache`) keyed by a fingerprint of the model's weights, the full prompt and
the generation parameters: a rerun reuses them, and a killed eval resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fspo.data.episodes import Episode, build_episodes
from fspo.data.io import PreferenceData
from fspo.data.prompts import parse_generation
from fspo.data.runs import RUN_FILE
from fspo.data.schema import PreferenceRecord
from fspo.data.splits import evenly_spaced
from fspo.data.truncation import fit_generation_prompt
from fspo.errors import FspoError
from fspo.llm.base import GenerationParams
from fspo.llm.cache import CachedBackend, CallCache, ChunkShare

# --- which queries ------------------------------------------------------------------------------


def select_episodes(
    records: Sequence[PreferenceRecord],
    n_shots: int,
    seed: int,
    n_users: int = 0,
    n_queries: int = 0,
    query_split: str | None = None,
) -> list[Episode]:
    """One episode per query row (N seeded shots from the same user's other questions).

    ``n_users``/``n_queries`` (0 = all) keep an evenly spread, deterministic subset; the same
    query rows come out for every N, so a reward-accuracy curve compares like with like.
    ``query_split`` keeps only queries of that split (held-out questions of training users).
    """
    users = sorted({r.user_id for r in records})
    users = evenly_spaced(users, n_users) if n_users else users
    keep = set(users)
    episodes, _ = build_episodes([r for r in records if r.user_id in keep], n_shots, 1, seed, "shrink", min_shots=0)
    by_user: dict[str, list[Episode]] = {}
    for ep in episodes:
        if query_split is None or ep.query.split == query_split:
            by_user.setdefault(ep.user_id, []).append(ep)
    out: list[Episode] = []
    for user in users:
        eps = by_user.get(user, [])
        out += evenly_spaced(eps, n_queries) if n_queries else eps
    return out


def heldout_question_records(data: PreferenceData, heldout_users: Sequence[str]) -> list[PreferenceRecord]:
    """All rows of *training* users (some train rows, not held out) that also have split=test rows;
    with ``query_split="test"`` in :func:`select_episodes` the test rows are the queries."""
    held = set(heldout_users)
    has_train = {r.user_id for r in data.prefs if r.split == "train"}
    users = {r.user_id for r in data.prefs if r.split == "test" and r.user_id in has_train and r.user_id not in held}
    return [r for r in data.prefs if r.user_id in users]


# --- models -------------------------------------------------------------------------------------


def model_fingerprint(spec: str) -> str:
    """Identity of a model's weights for cache keys: preset name, or a hash of config + weight files'
    sizes and mtimes (a retrained run folder gets new keys, a rerun on the same weights hits). The
    run record is left out: a rerun of a finished ``fspo train`` rewrites it, the weights stay."""
    if spec == "tiny":
        return "tiny"
    from fspo.models.registry import model_dir

    path = model_dir(spec)
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin") and f.name != RUN_FILE:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{spec}@{h.hexdigest()[:16]}"


_LOADING = threading.Lock()
"""One load at a time across eval lanes (fspo.eval.lanes): transformers builds a model under
process-wide init contexts, and two threads loading at once got meta tensors."""


class ModelPool:
    """Loads each model spec once, on first use (a fully cached rerun loads nothing)."""

    def __init__(self, dtype: str = "float32", seed: int = 0, device: str = "auto") -> None:
        from fspo.models.registry import resolve_device

        resolve_device(device)  # a missing GPU is a one-line error now, not after the first stage
        self.dtype = dtype
        self.seed = seed
        self.device = device
        self._models: dict[str, tuple] = {}
        self._tokenizers: dict[str, object] = {}

    def tokenizer(self, spec: str):
        if spec not in self._tokenizers:
            from fspo.models.registry import load_tokenizer

            with _LOADING:
                self._tokenizers[spec] = load_tokenizer(spec)
        return self._tokenizers[spec]

    def get(self, spec: str):
        if spec not in self._models:
            from fspo.models.registry import load_model

            with _LOADING:
                model, tok = load_model(spec, self.dtype, seed=self.seed, device=self.device)
            model.eval()
            self._models[spec] = (model, tok)
            self._tokenizers[spec] = tok
        return self._models[spec]


class LazyLocalBackend:
    """A :class:`fspo.llm.local.LocalBackend` whose model loads on the first uncached call."""

    def __init__(self, pool: ModelPool, spec: str, batch_size: int = 8, progress: bool = False) -> None:
        self.pool = pool
        self.spec = spec
        self.name = model_fingerprint(spec)
        self.batch_size = batch_size
        self.progress = progress

    def _backend(self):
        from fspo.llm.local import LocalBackend

        model, tok = self.pool.get(self.spec)
        return LocalBackend(model, tok, name=self.name, batch_size=self.batch_size, progress=self.progress)

    def generate(self, prompts, params: GenerationParams) -> list[str]:
        return self._backend().generate(prompts, params)

    def choice_logprobs(self, prompts, choices, prefix: str = ""):
        return self._backend().choice_logprobs(prompts, choices, prefix)


def engine_backend(engine: str, spec: str, option: str = "--engine", concurrency: int = 8):
    """A client of the engine at ``engine`` (``URL[#model]``) serving ``spec``; its cache name ties the
    endpoint to the local weights' fingerprint, so answers of another engine or model never replay."""
    from fspo.llm.openai_compat import OpenAIBackend

    backend = OpenAIBackend.from_endpoint(engine, option, concurrency=concurrency)
    backend.name = f"engine:{backend.endpoint}|{model_fingerprint(spec)}"
    return backend


# --- prompts and generations --------------------------------------------------------------------


@dataclass
class Generation:
    method: str
    user_id: str
    question: str
    answer: str
    description: str | None  # RAT's inferred user description
    shots: int
    raw: str

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def generation_prompts(
    layout: str,
    spec: str,
    episodes: Sequence[Episode],
    descriptions: dict[str, str],
    pool: ModelPool,
    max_new_tokens: int,
    max_length: int,
    chat_template: bool = False,
) -> tuple[list[str], list[int]]:
    """Each episode's rendered generation prompt (oldest shots dropped to fit ``max_length`` with
    ``max_new_tokens``) and the shots it kept."""
    tok = pool.tokenizer(spec)
    budget = max_length - max_new_tokens
    prompts, kept = [], []
    for ep in episodes:
        fitted = fit_generation_prompt(
            tok, ep.shots, ep.query.prompt, layout, budget, chat_template, descriptions.get(ep.user_id)
        )
        if fitted is None:
            raise FspoError(
                f"a question of user {ep.user_id!r} does not fit max_length {max_length} with "
                f"{max_new_tokens} new tokens even without shots; raise --max-length"
            )
        prompts.append(fitted.text)
        kept.append(fitted.n_shots)
    return prompts, kept


def greedy(max_new_tokens: int) -> GenerationParams:
    """The eval's decoding: greedy, so every answer is deterministic."""
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=0)


def generate_method(
    method: str,
    layout: str,
    spec: str,
    episodes: Sequence[Episode],
    descriptions: dict[str, str],
    pool: ModelPool,
    cache: CallCache,
    max_new_tokens: int,
    max_length: int,
    chat_template: bool = False,
    batch_size: int = 8,
    progress: bool = False,
    engine: str | None = None,
    option: str = "--engine",
    share: ChunkShare | None = None,
) -> tuple[list[Generation], dict]:
    """Greedy answers of one method to every episode; returns (generations, stats with cache hits).

    ``engine`` (``URL[#model]``, an OpenAI-compatible server serving ``spec``): the same rendered
    prompts are sent to its ``/v1/completions`` as raw text instead of the local model (the
    tokenizer of ``spec`` still fits the shots); ``option`` names the option in errors.
    ``share``: chunks a helping eval lane may compute (:class:`fspo.llm.cache.ChunkShare`)."""
    prompts, kept = generation_prompts(
        layout, spec, episodes, descriptions, pool, max_new_tokens, max_length, chat_template
    )
    inner = (
        LazyLocalBackend(pool, spec, batch_size, progress=False) if not engine else engine_backend(engine, spec, option)
    )
    backend = CachedBackend(inner, cache, progress=progress, share=share if not engine else None)
    texts = backend.generate(prompts, greedy(max_new_tokens), desc=f"generate {method}")
    out = []
    for ep, raw, n in zip(episodes, texts, kept):
        answer, desc = parse_generation(raw, layout)
        out.append(Generation(method, ep.user_id, ep.query.prompt, answer, desc, n, raw))
    stats = {
        "calls": len(prompts),
        "cache_hits": backend.hits,
        "generated": backend.misses,
        "empty_answers": sum(1 for g in out if not g.answer.strip()),
        "echoed_question": sum(1 for g in out if g.answer.strip() == g.question.strip()),
        "mean_shots": (sum(kept) / len(kept)) if kept else 0.0,
    }
    return out, stats


def open_cache(out: str | Path) -> CallCache:
    return CallCache(Path(out) / "cache.sqlite")
