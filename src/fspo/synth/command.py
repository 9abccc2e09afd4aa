"""``fspo synth``: synthetic personalized preference data (prefs.jsonl + users.jsonl + diagnostics/)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

BACKENDS = ("local", "openai", "scripted", "none")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate synthetic personalized preferences (resumable)",
        description="Build users, questions, steered responses and user-conditioned labels for a domain, and write "
        "prefs.jsonl, users.jsonl and diagnostics/ to --out. Every model call is cached in OUT/.cache, so rerunning "
        "the same command resumes where a killed run stopped.",
    )
    p.add_argument("--domain", default="reviews", help="reviews | elix | roleplay | path to a domain YAML")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--questions", type=int, default=20)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local: in-process transformers; openai: any OpenAI-compatible server; scripted: rule-based "
        "fake for tests; none: no model (templated reviews with attribute labels only)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="model spec (local: smollm2 | tiny | folder; openai: the served model name); repeat for an ensemble",
    )
    p.add_argument("--judge-model", default=None, help="model that labels (default: the first --model)")
    p.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1"),
        help="OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1 (llama.cpp) or :8000/v1 (vLLM)",
    )
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight")
    p.add_argument("--timeout", type=float, default=120.0, help="openai: seconds per request")
    p.add_argument("--batch-size", type=int, default=8, help="local: prompts per generation batch")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout-users", type=float, default=0.25, help="fraction of users marked test (whole users)")
    p.add_argument("--heldout-questions", type=float, default=0.0, help="fraction of questions marked test")
    p.add_argument(
        "--responses",
        choices=("templates", "steered", "views"),
        default=None,
        help="override the domain's response source",
    )
    p.add_argument("--labeler", choices=("attribute", "judge"), default=None, help="override the domain's labeler")
    p.add_argument(
        "--judge-mode",
        choices=("auto", "text", "logprob"),
        default="auto",
        help="auto: log-prob verdicts where the backend offers them, else parsed text",
    )
    p.add_argument("--refine", dest="refine", action="store_true", default=None, help="force persona refinement on")
    p.add_argument("--no-refine", dest="refine", action="store_false", help="force persona refinement off")
    p.add_argument("--questions-file", default=None, help="extra questions: .txt (one per line) or .jsonl")
    p.add_argument("--no-resume", action="store_true", help="discard the call cache and start over")
    p.add_argument("--no-embed", action="store_true", help="skip the MiniLM similarity diagnostics")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_synth_command)


def make_backends(args: argparse.Namespace) -> tuple[list, object | None]:
    """The generator backends (an ensemble when several models) and an optional separate judge."""
    models = args.model or []
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
            return OpenAIBackend(
                args.base_url, m, api_key=args.api_key, concurrency=args.concurrency, timeout=args.timeout
            )

        return [make(m) for m in models], (make(args.judge_model) if args.judge_model else None)
    from fspo.llm.local import LocalBackend

    loaded: dict[str, LocalBackend] = {}

    def local(m: str) -> LocalBackend:
        if m not in loaded:
            loaded[m] = LocalBackend.from_spec(m, batch_size=args.batch_size)
        return loaded[m]

    return [local(m) for m in (models or ["smollm2"])], (local(args.judge_model) if args.judge_model else None)


def run_synth_command(args: argparse.Namespace) -> int:
    from fspo.synth.domain import load_domain
    from fspo.synth.pipeline import SynthConfig, check_config, run_synth

    domain = load_domain(args.domain)  # fail fast on a bad domain, before loading any model
    needs_model = (
        (args.responses or domain.response_source) != "templates"
        or (args.labeler or domain.labeler) == "judge"
        or domain.questions.get("source") == "generate"
        or bool(domain.persona.get("elaborate"))
    )
    if args.backend == "local" and not needs_model:
        args.backend = "none"  # templated reviews with attribute labels: no model to load
    cfg = SynthConfig(
        domain=args.domain,
        users=args.users,
        questions=args.questions,
        out=args.out,
        seed=args.seed,
        heldout_users=args.heldout_users,
        heldout_questions=args.heldout_questions,
        labeler=args.labeler,
        responses=args.responses,
        judge_mode=args.judge_mode,
        refine=args.refine,
        embed=not args.no_embed,
        plots=not args.no_plots,
        resume=not args.no_resume,
        questions_file=args.questions_file,
        progress=not args.quiet,
    )
    check_config(cfg)  # before loading any model
    gens, judge = make_backends(args)
    result = run_synth(cfg, gens, judge)
    d, run = result["diagnostics"], result["run"]
    c = d["counts"]
    sim = d["similarity"]
    print(
        f"wrote {c['prefs_written']} preferences ({c['prefs_train']} train, {c['prefs_test']} test) for {d['users']} users "
        f"to {args.out}/prefs.jsonl, users.jsonl, diagnostics/ in {run['timings_s']['total']:.1f}s",
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
