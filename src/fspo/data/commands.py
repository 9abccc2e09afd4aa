"""``fspo validate`` and ``fspo export``: check data files, convert to TRL's format."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check preference/user files; print every problem as FILE:LINE: field: message",
        description="Check prefs.jsonl / users.jsonl files (JSONL, JSON, Parquet or a datasets folder). Prints every "
        "problem as FILE:LINE: field: message and exits 2 when any file is invalid.",
    )
    p.add_argument("files", nargs="+", help="files or folders to check")
    p.add_argument("--shots", type=int, default=None, help="also report users with fewer than SHOTS+1 preferences")
    p.set_defaults(func=run_validate)

    e = sub.add_parser("export", help="export preferences to TRL's prompt/chosen/rejected JSONL")
    e.add_argument("data", help="prefs.jsonl (or a folder holding it)")
    e.add_argument("--out", required=True, help="output JSONL path")
    e.add_argument("--split", default=None, help="only rows of this split (train/test)")
    e.set_defaults(func=run_export)


def run_validate(args: argparse.Namespace) -> int:
    from collections import Counter
    from pathlib import Path

    from fspo.data.io import looks_like_users_file, read_preferences, validate_file

    bad = False
    for f in args.files:
        path = Path(f)
        if path.is_dir() and (path / "prefs.jsonl").exists():
            targets = [path / "prefs.jsonl"] + ([path / "users.jsonl"] if (path / "users.jsonl").exists() else [])
        else:
            targets = [path]
        for target in targets:
            problems = validate_file(target)
            for prob in problems:
                print(prob)
            bad |= bool(problems)
            if not problems and args.shots is not None and not looks_like_users_file(target):
                counts = Counter(r.user_id for r in read_preferences(target))
                for user, n in sorted(counts.items()):
                    if n < args.shots + 1:
                        print(
                            f"{target}: user_id: user {user!r} has {n} preferences, fewer than shots+1={args.shots + 1}"
                        )
            if not problems:
                print(f"{target}: ok", file=sys.stderr)
    return 2 if bad else 0


def run_export(args: argparse.Namespace) -> int:
    from fspo.data.io import export_trl, load_data

    data = load_data(args.data)
    rows = data.prefs if args.split is None else data.split(args.split)
    n = export_trl(rows, args.out)
    print(f"wrote {n} rows to {args.out}")
    return 0
