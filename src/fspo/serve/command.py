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
from typing import TYPE_CHECKING

from fspo.errors import FspoError, loading

if TYPE_CHECKING:
    from fspo.serve.config import ServeConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    from fspo.config import add_config_arguments
    from fspo.serve.config import PersonalizeConfig, ServeConfig

    p = sub.add_parser(
        "personalize",
        help="answer a question personalized to one user's labeled preferences",
        description="Answer QUESTION conditioned on the user's preference pairs in --prefs. RAT models also print "
        "the user description they inferred. Options come from defaults, then --config YAML, then flags.",
    )
    p.add_argument("question", help="the question to answer")
    add_config_arguments(p, PersonalizeConfig)
    p.set_defaults(func=run_personalize)

    s = sub.add_parser(
        "serve",
        help="HTTP API: per-user preferences, personalized generation, OpenAI-compatible chat",
        description="Serve personalized generation over HTTP (see docs/serving.md). OpenAPI spec at /openapi.json. "
        "Options come from defaults, then --config YAML, then flags.",
    )
    add_config_arguments(s, ServeConfig)
    s.set_defaults(func=run_serve)


def admin_keys(args: ServeConfig) -> list[str]:
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


def load_engine(info, cache_users: int, device: str = "auto", dtype: str = "float32", max_batch: int = 16):
    """The engine for ``info`` on ``device`` in ``dtype``, or a one-line error (a folder that is not a
    model, corrupt weights, a device this machine lacks)."""
    from fspo.serve.personalize import Engine

    with loading(f"{info.spec}: cannot load the model"):
        return Engine.load(info, cache_users=cache_users, device=device, dtype=dtype, max_batch=max_batch)


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


def run_personalize(cli: argparse.Namespace) -> int:
    from fspo.config import config_from_args
    from fspo.data.runs import resolve_model
    from fspo.serve.api import sampling
    from fspo.serve.config import PersonalizeConfig

    args = config_from_args(PersonalizeConfig, cli)
    info = resolve_model(args.model).with_prompting(args.layout, args.shots).for_serving()
    user, shots = _user_shots(args.prefs, args.user)
    engine = load_engine(info, cache_users=0, device=args.device, dtype=args.dtype)
    params = sampling(args.max_new_tokens, args.temperature, None, args.seed)
    out = engine.generate(user, shots, cli.question, params, use_cache=False)
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


def run_serve(cli: argparse.Namespace) -> int:
    from fspo.config import config_from_args
    from fspo.data.runs import resolve_model
    from fspo.serve.api import create_app
    from fspo.serve.config import ServeConfig
    from fspo.serve.live import listen, run_server
    from fspo.serve.users import UserStore

    args = config_from_args(ServeConfig, cli)
    store = UserStore(args.db)  # a folder or a file that is not SQLite: a one-line error
    sock = listen(args.host, args.port)  # before the model loads: a taken port fails fast
    keys = admin_keys(args)
    info = resolve_model(args.model).with_prompting(args.layout, args.shots).for_serving()
    if args.engine:  # prompts assembled here, generated by the engine (fspo/serve/remote.py)
        from fspo.serve.remote import RemoteEngine

        engine = RemoteEngine.connect(args.engine, info, timeout=args.engine_timeout)
        where = engine.device
    else:
        engine = load_engine(
            info, cache_users=args.cache_users, device=args.device, dtype=args.dtype, max_batch=args.max_batch
        )
        where = f"{engine.device}, {args.dtype}"
    app = create_app(engine, store, keys, model_name=args.name or args.model)
    print(
        f"fspo serve: {args.model} ({info.layout}, {info.n_shots} shots, {where}) on http://{args.host}:{sock.getsockname()[1]} "
        f"(OpenAPI: /docs, /openapi.json)",
        file=sys.stderr,
    )
    run_server(app, sock)
    return 0
