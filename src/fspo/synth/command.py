"""``fspo synth``: synthetic personalized preference data (prefs.jsonl + users.jsonl + diagnostics/)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from fspo.llm.endpoints import is_endpoint

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
        "flags and section.field=value overrides. --engine http://host:port/v1#model generates through an "
        "OpenAI-compatible server (vLLM, llama.cpp, another fspo serve); its key comes from $OPENAI_API_KEY.",
    )
    add_config_arguments(p, SynthConfig, ALIASES)
    p.set_defaults(func=run_synth_command)


def _engine(args: SynthConfig, spec: str, option: str):
    from fspo.llm.openai_compat import OpenAIBackend

    return OpenAIBackend.from_endpoint(spec, option, concurrency=args.concurrency, timeout=args.timeout)


def make_backends(args: SynthConfig) -> tuple[list, object | None]:
    """The generator backends (an ensemble when several models) and an optional separate judge.

    Engines are written ``URL[#model]`` (:mod:`fspo.llm.endpoints`): ``--engine`` for the generator
    (``--backend openai --base-url URL --models NAME`` is the older spelling of the same), and
    ``--judge-engine`` (or a ``--judge-model`` URL) for a judge on another server."""
    models = args.models
    judge = None
    if args.judge_engine:
        judge = _engine(args, args.judge_engine, "--judge_engine")
    elif args.judge_model and is_endpoint(args.judge_model):
        judge = _engine(args, args.judge_model, "--judge_model")
    if args.backend == "none":
        return [], judge
    if args.backend == "scripted":
        from fspo.llm.scripted import ScriptedBackend

        gens = [ScriptedBackend(name=f"scripted:{m}" if models else "scripted") for m in (models or [""])]
        if judge is None and args.judge_model:
            judge = ScriptedBackend(name=f"scripted:{args.judge_model}")
        return gens, judge
    if args.backend == "openai":
        from fspo.errors import FspoError
        from fspo.llm.endpoints import parse_endpoint

        option = "--engine" if args.engine else "--base_url"
        url = args.engine or args.base_url or os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
        endpoint = parse_endpoint(url, option)
        if not models and not args.engine:
            raise FspoError("--backend openai needs --model NAME (the model name the server serves), or --engine URL")
        names = [endpoint.model] if endpoint.model else (models or [None])
        gens = [_engine(args, replace(endpoint, model=m), option) for m in names]
        if judge is None and args.judge_model:
            judge = _engine(args, replace(endpoint, model=args.judge_model), option)
        return gens, judge
    from fspo.llm.local import LocalBackend

    loaded: dict[str, LocalBackend] = {}

    def local(m: str) -> LocalBackend:
        if m not in loaded:
            loaded[m] = LocalBackend.from_spec(m, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        return loaded[m]

    if judge is None and args.judge_model:
        judge = local(args.judge_model)
    return [local(m) for m in (models or ["smollm2"])], judge


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
