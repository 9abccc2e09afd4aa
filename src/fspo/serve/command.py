"""``fspo personalize`` (one answer for one user, from a prefs file) and ``fspo serve`` (HTTP API)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "personalize",
        help="answer a question personalized to one user's labeled preferences",
        description="Answer QUESTION conditioned on the user's preference pairs in --prefs. RAT models also print "
        "the user description they inferred.",
    )
    p.add_argument("question", help="the question to answer")
    p.add_argument("--model", required=True, help="run folder (fspo train output), model folder, 'tiny' or 'smollm2'")
    p.add_argument("--prefs", required=True, help="the user's preferences (JSONL/JSON/Parquet, canonical format)")
    p.add_argument("--user", help="which user_id in --prefs (required when the file holds several users)")
    p.add_argument("--layout", help="override the run's prompt layout (fspo, rat, prefonly, zeroshot)")
    p.add_argument("--shots", type=int, help="override the run's number of shots (most recent pairs are used)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show-prompt", action="store_true", help="print the rendered prompt to stderr")
    p.set_defaults(func=run_personalize)

    s = sub.add_parser(
        "serve",
        help="HTTP API: per-user preferences, personalized generation, OpenAI-compatible chat",
        description="Serve personalized generation over HTTP (see docs/serving.md). OpenAPI spec at /openapi.json.",
    )
    s.add_argument("--model", required=True, help="run folder, model folder, 'tiny' or 'smollm2'")
    s.add_argument("--db", default="fspo_serve.sqlite", help="SQLite file for users and preferences")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", action="append", help="admin key (repeatable; default: env FSPO_API_KEY)")
    s.add_argument("--cache-users", type=int, default=32, help="users whose prefix KV cache is kept (LRU)")
    s.add_argument("--layout", help="override the run's prompt layout")
    s.add_argument("--shots", type=int, help="override the run's number of shots")
    s.add_argument("--name", default=None, help="model name reported by /v1/models (default: --model)")
    s.set_defaults(func=run_serve)


def _user_shots(path: str, user: str | None):
    from fspo.data.io import read_preferences
    from fspo.errors import FspoError

    records = read_preferences(path)
    users = sorted({r.user_id for r in records})
    if user is None:
        if len(users) > 1:
            shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
            raise FspoError(f"{path}: holds {len(users)} users ({shown}); pick one with --user")
        user = users[0] if users else "user"
    shots = [r for r in records if r.user_id == user]
    if not shots:
        raise FspoError(f"{path}: no preferences for user {user!r}")
    return user, shots


def run_personalize(args: argparse.Namespace) -> int:
    from fspo.data.runs import resolve_model
    from fspo.llm.base import GenerationParams
    from fspo.serve.personalize import Engine

    info = resolve_model(args.model).with_prompting(args.layout, args.shots).for_serving()
    user, shots = _user_shots(args.prefs, args.user)
    engine = Engine.load(info, cache_users=0)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    out = engine.generate(user, shots, args.question, params, use_cache=False)
    if args.show_prompt:
        print(out.prompt, file=sys.stderr)
    note = f"[{info.layout} layout, {out.shots_used} of {out.shots_available} preference pairs used"
    if out.shots_used < min(out.shots_available, info.n_shots):
        note += f"; older pairs dropped to fit max_length {info.max_length}"
    print(note + "]", file=sys.stderr)
    if out.description is not None:
        print(f"User description (inferred): {out.description}\n")
    print(out.answer)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fspo.data.runs import resolve_model
    from fspo.serve.api import create_app
    from fspo.serve.personalize import Engine
    from fspo.serve.users import UserStore

    keys = args.api_key or ([os.environ["FSPO_API_KEY"]] if os.environ.get("FSPO_API_KEY") else [])
    if not keys:
        keys = ["fspo-admin-" + secrets.token_urlsafe(24)]
        print(f"no --api-key or FSPO_API_KEY given; admin key for this run: {keys[0]}", file=sys.stderr)
    info = resolve_model(args.model).with_prompting(args.layout, args.shots).for_serving()
    engine = Engine.load(info, cache_users=args.cache_users)
    app = create_app(engine, UserStore(args.db), keys, model_name=args.name or args.model)
    print(
        f"fspo serve: {args.model} ({info.layout}, {info.n_shots} shots) on http://{args.host}:{args.port} "
        f"(OpenAPI: /docs, /openapi.json)",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
