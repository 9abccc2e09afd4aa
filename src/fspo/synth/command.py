"""``fspo synth``: synthetic personalized preference data (prefs.jsonl + users.jsonl + diagnostics/)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fspo.synth.config import SynthConfig

# Flag spellings kept from before the config system.
ALIASES = {
    "model": "models",
    "no-refine": "!refine",
    "no-resume": "!resume",
    "no-embed": "!embed",
    "no-plots": "!plots",
    "quiet": "!progress",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from fspo.config import add_config_arguments
    from fspo.synth.config import SynthConfig

    p = sub.add_parser(
        "synth",
        help="generate synthetic personalized preferences (resumable)",
        description="Build users, questions, steered responses and user-conditioned labels for a domain, and write "
        "prefs.jsonl, users.jsonl and diagnostics/ to --out. Every model call is cached in OUT/.cache, so rerunning "
        "the same command resumes where a killed run stopped. Options come from defaults, then --config YAML, then "
        "flags and section.field=value overrides. The openai backend reads its key from $OPENAI_API_KEY.",
    )
    add_config_arguments(p, SynthConfig, ALIASES)
    p.set_defaults(func=run_synth_command)


def make_backends(args: SynthConfig) -> tuple[list, object | None]:
    """The generator backends (an ensemble when several models) and an optional separate judge."""
    models = args.models
    if args.backend == "none":
        return [], None
    if args.backend == "scripted":
        from fspo.llm.scripted import ScriptedBackend

        gens = [ScriptedBackend(name=f"scripted:{m}" if models else "scripted") for m in (models or [""])]
        return gens, (ScriptedBackend(name=f"scripted:{args.judge_model}") if args.judge_model else None)
    if args.backend == "openai":
        from fspo.errors import FspoError
        from fspo.llm.openai_compat import OpenAIBackend

        if not models:
            raise FspoError("--backend openai needs --model NAME (the model name the server serves)")

        def make(m: str):
            url = args.base_url or os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
            return OpenAIBackend(url, m, concurrency=args.concurrency, timeout=args.timeout)

        return [make(m) for m in models], (make(args.judge_model) if args.judge_model else None)
    from fspo.llm.local import LocalBackend

    loaded: dict[str, LocalBackend] = {}

    def local(m: str) -> LocalBackend:
        if m not in loaded:
            loaded[m] = LocalBackend.from_spec(m, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        return loaded[m]

    return [local(m) for m in (models or ["smollm2"])], (local(args.judge_model) if args.judge_model else None)


def run_synth_command(args: argparse.Namespace) -> int:
    from fspo.config import config_from_args
    from fspo.synth.config import SynthConfig
    from fspo.synth.domain import load_domain
    from fspo.synth.pipeline import check_config, run_synth

    cfg = config_from_args(SynthConfig, args)
    domain = load_domain(cfg.domain)  # fail fast on a bad domain, before loading any model
    needs_model = (
        (cfg.responses or domain.response_source) != "templates"
        or (cfg.labeler or domain.labeler) == "judge"
        or domain.questions.get("source") == "generate"
        or bool(domain.persona.get("elaborate"))
    )
    if cfg.backend == "local" and not needs_model:
        cfg.backend = "none"  # templated reviews with attribute labels: no model to load
    check_config(cfg)  # before loading any model
    gens, judge = make_backends(cfg)
    result = run_synth(cfg, gens, judge)
    d, run = result["diagnostics"], result["run"]
    c = d["counts"]
    sim = d["similarity"]
    print(
        f"wrote {c['prefs_written']} preferences ({c['prefs_train']} train, {c['prefs_test']} test) for {d['users']} users "
        f"to {cfg.out}/prefs.jsonl, users.jsonl, diagnostics/ in {run['timings_s']['total']:.1f}s",
        file=sys.stderr,
    )
    hits = sum(v["hits"] for v in run["cache"].values())
    misses = sum(v["misses"] for v in run["cache"].values())
    print(
        f"calls: {misses} sent, {hits} replayed from cache; similarity mean {sim['mean']} median {sim['median']}; "
        f"order consistency {d['order_consistency']['after']}; entropy {d['entropy']['mean_before']} -> "
        f"{d['entropy']['mean_after']} nats",
        file=sys.stderr,
    )
    return 0
