"""``fspo study init|serve|export|analyze``: run a browser human study (docs/study.md).

Everything a participant could trip over is checked by the operator's command instead: ``init``
and ``serve`` load the model and check that every compare question fits before anyone waits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fspo.errors import FspoError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="human study in the browser: personalized vs baseline, blind pairwise",
        description="Run a human study like the paper's: participants label K preference pairs, then judge blind "
        "A/B comparisons of personalized vs baseline answers. See docs/study.md.",
    )
    ss = p.add_subparsers(dest="study_command", metavar="STEP")
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])

    i = ss.add_parser("init", help="create the study (from a config) and print invite tokens / links")
    i.add_argument("--config", help="study YAML (required the first time; see examples/study.yaml)")
    i.add_argument("--db", required=True, help="SQLite file for this study")
    i.add_argument("--participants", type=int, default=1, help="how many invites to create")
    i.add_argument("--base-url", default="http://127.0.0.1:8080", help="printed invite links start with this")
    from fspo.models import DEVICE_NAMES, DTYPE_NAMES

    i.add_argument(
        "--device", default="auto", choices=DEVICE_NAMES, help="where the model loads for the fit check (default: auto)"
    )
    i.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="model dtype (default: float32)")
    i.set_defaults(func=run_init)

    from fspo.config import add_config_arguments
    from fspo.serve.config import StudyServeConfig

    s = ss.add_parser(
        "serve", help="serve the study web app", description="Options come from defaults, --config YAML, then flags."
    )
    add_config_arguments(s, StudyServeConfig)
    s.set_defaults(func=run_serve)

    e = ss.add_parser("export", help="write the comparisons (and optionally labels) as CSV")
    e.add_argument("--db", required=True)
    e.add_argument("--out", required=True, help="comparisons CSV (cells that a spreadsheet would run get a ' prefix)")
    e.add_argument("--labels-out", help="labels CSV (likewise)")
    e.set_defaults(func=run_export)

    a = ss.add_parser("analyze", help="win rate, exact binomial test and 95%% CIs")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--db")
    src.add_argument("--csv", help="a file written by 'fspo study export'")
    a.add_argument("--json", action="store_true", help="print JSON instead of text")
    a.set_defaults(func=run_analyze)


def _open(db: str):
    """Open an existing study database (serve/export/analyze must not create an empty one)."""
    from fspo.serve.study.store import StudyStore

    if not Path(db).exists():
        raise FspoError(f"{db}: no such study database; create it with 'fspo study init --config ... --db {db}'")
    store = StudyStore(db)
    store.config()
    return store


def run_init(args: argparse.Namespace) -> int:
    from fspo.serve.study.config import load_config
    from fspo.serve.study.store import StudyStore

    if args.participants < 0 or args.participants > 10_000:
        raise FspoError("--participants must be between 0 and 10000")
    if not args.config and not Path(args.db).exists():
        raise FspoError(f"{args.db}: no study yet; pass --config to create it")
    config = load_config(args.config) if args.config else None  # before any file is created
    if config is not None and config.needs_model():  # the model loads and every question fits
        from fspo.serve.study.app import answer_budgets, check_fit, load_engines

        engines = load_engines(config, args.device, args.dtype)
        problems = check_fit(config, answer_budgets(config, *engines))
        if problems:
            raise FspoError(problems[0])
    store = StudyStore(args.db)
    if config is not None:
        changed = store.set_config(config)
        if changed:
            print(f"updated {', '.join(changed)}; restart 'fspo study serve' to use them", file=sys.stderr)
    config = store.config()
    tokens = store.invite(args.participants)
    print(f"study {config.title!r} in {args.db}: {len(tokens)} new invites", file=sys.stderr)
    for token in tokens:
        print(f"{token}\t{args.base_url.rstrip('/')}/join?token={token}")
    return 0


def run_serve(cli: argparse.Namespace) -> int:
    from fspo.config import config_from_args
    from fspo.data.io import lock_file
    from fspo.serve.config import StudyServeConfig
    from fspo.serve.live import listen, run_server
    from fspo.serve.study.app import answer_budgets, check_fit, create_app, load_engines

    args = config_from_args(StudyServeConfig, cli)
    store = _open(args.db)
    with lock_file(args.db):  # one server per study database, held from before the models load
        sock = listen(args.host, args.port)  # before the model loads: a taken port fails fast
        config = store.config()
        engine, baseline = load_engines(config, args.device, args.dtype) if config.needs_model() else (None, None)
        if engine is not None:  # a study already running is not refused: the long question gets fewer tokens
            for problem in check_fit(config, answer_budgets(config, engine, baseline), serving=True):
                print(f"fspo study: warning: {problem}", file=sys.stderr)
        app = create_app(store, engine, baseline, device=args.device, dtype=args.dtype)
        waiting = app.state.generator.resume()
        note = f"; generating answers for {waiting} waiting participants" if waiting else ""
        port = sock.getsockname()[1]
        print(
            f"fspo study: http://{args.host}:{port}/ (participants join with their invite link){note}", file=sys.stderr
        )
        run_server(app, sock)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from fspo.serve.study.analyze import EXPORT_FIELDS, LABEL_FIELDS, write_csv

    if args.labels_out and Path(args.labels_out).absolute() == Path(args.out).absolute():
        raise FspoError("--labels-out must differ from --out")
    for target in filter(None, (args.out, args.labels_out)):  # both checked before either is written
        if Path(target).is_dir() or target.endswith(("/", "\\")):
            raise FspoError(f"{target}: is a folder; give a file name for the CSV")
    store = _open(args.db)
    rows = store.comparison_rows()
    write_csv(args.out, rows, EXPORT_FIELDS)
    print(f"wrote {len(rows)} comparison rows to {args.out}", file=sys.stderr)
    if args.labels_out:
        labels = store.label_rows()
        write_csv(args.labels_out, labels, LABEL_FIELDS)
        print(f"wrote {len(labels)} label rows to {args.labels_out}", file=sys.stderr)
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    from fspo.serve.study.analyze import analyze, format_report, read_csv

    rows = _open(args.db).comparison_rows() if args.db else read_csv(args.csv)
    result = analyze(rows)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_report(result))
    return 0
