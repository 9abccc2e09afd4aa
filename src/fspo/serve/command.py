"""``fspo personalize`` (one answer for one user, from a prefs file) and ``fspo serve`` (HTTP API).

Options are checked before the model loads, so a typo costs a one-line error, not a wait and a
traceback. Admin keys are best passed by file or environment: a command line is public on a
shared machine (``ps`` shows it to every user).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from fspo.errors import FspoError


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
    p.add_argument("--max-new-tokens", type=int, default=200, help=f"1 to {MAX_NEW_TOKENS} (default: 200)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 to 2; 0 (or below 1e-5) is greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, 0 to 2**63-1")
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
    s.add_argument("--port", type=int, default=8000, help="0 to 65535 (0: any free port, printed at start)")
    s.add_argument(
        "--api-key",
        action="append",
        help="admin key (repeatable). Visible to other users of this machine in the process list: prefer "
        "--api-key-file or the environment variable FSPO_API_KEY",
    )
    s.add_argument("--api-key-file", help="file with admin keys, one per line (keep it mode 0600)")
    s.add_argument("--cache-users", type=int, default=32, help="users whose prefix KV cache is kept (LRU), 0 to 100000")
    s.add_argument("--layout", help="override the run's prompt layout")
    s.add_argument("--shots", type=int, help="override the run's number of shots")
    s.add_argument("--name", default=None, help="model name reported by /v1/models (default: --model)")
    s.set_defaults(func=run_serve)


MAX_NEW_TOKENS = 8192


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # also refuses NaN
        raise FspoError(f"{name} must be from {low:g} to {high:g}, got {value}")


def admin_keys(args: argparse.Namespace) -> list[str]:
    """Admin keys from --api-key and --api-key-file, else FSPO_API_KEY, else one random key (printed)."""
    keys = [k.strip() for k in args.api_key or [] if k.strip()]
    if args.api_key_file:
        try:
            text = Path(args.api_key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FspoError(
                f"--api-key-file {args.api_key_file}: cannot read: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        from_file = [line.strip() for line in text.splitlines() if line.strip()]
        if not from_file:
            raise FspoError(f"--api-key-file {args.api_key_file}: holds no key")
        keys += from_file
    if not keys and os.environ.get("FSPO_API_KEY", "").strip():
        keys.append(os.environ["FSPO_API_KEY"].strip())
    if not keys:
        keys = ["fspo-admin-" + secrets.token_urlsafe(24)]
        print(f"no --api-key, --api-key-file or FSPO_API_KEY given; admin key for this run: {keys[0]}", file=sys.stderr)
    return keys


def load_engine(info, cache_users: int):
    """The engine for ``info``, or a one-line error (a folder that is not a model, corrupt weights)."""
    from fspo.serve.personalize import Engine

    try:
        return Engine.load(info, cache_users=cache_users)
    except FspoError:
        raise
    except Exception as exc:
        message = (str(exc).strip().splitlines() or [""])[0][:300]
        raise FspoError(f"{info.spec}: cannot load the model: {type(exc).__name__}: {message}") from None


def _user_shots(path: str, user: str | None):
    from fspo.data.io import read_preferences

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
    from fspo.serve.api import sampling

    _check_range("--max-new-tokens", args.max_new_tokens, 1, MAX_NEW_TOKENS)
    _check_range("--temperature", args.temperature, 0.0, 2.0)
    _check_range("--seed", args.seed, 0, 2**63 - 1)
    info = resolve_model(args.model).with_prompting(args.layout, args.shots).for_serving()
    user, shots = _user_shots(args.prefs, args.user)
    engine = load_engine(info, cache_users=0)
    params = sampling(args.max_new_tokens, args.temperature, None, args.seed)
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
    from fspo.data.runs import resolve_model
    from fspo.serve.api import create_app
    from fspo.serve.live import listen, run_server
    from fspo.serve.users import UserStore

    _check_range("--cache-users", args.cache_users, 0, 100_000)
    store = UserStore(args.db)  # a folder or a file that is not SQLite: a one-line error
    sock = listen(args.host, args.port)  # before the model loads: a taken port fails fast
    keys = admin_keys(args)
    info = resolve_model(args.model).with_prompting(args.layout, args.shots).for_serving()
    engine = load_engine(info, cache_users=args.cache_users)
    app = create_app(engine, store, keys, model_name=args.name or args.model)
    print(
        f"fspo serve: {args.model} ({info.layout}, {info.n_shots} shots) on http://{args.host}:{sock.getsockname()[1]} "
        f"(OpenAPI: /docs, /openapi.json)",
        file=sys.stderr,
    )
    run_server(app, sock)
    return 0
