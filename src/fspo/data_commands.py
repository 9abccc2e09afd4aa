"""``fspo validate`` and ``fspo export``: check data files, convert to TRL's format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fspo.errors import DataError, FspoError, printable


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
    e.add_argument("--split", default=None, choices=("train", "test", "validation"), help="only rows of this split")
    e.set_defaults(func=run_export)


MAX_PROBLEMS = 100  # per file: a binary or wrongly encoded file would otherwise print a line per line


def validate_targets(paths: list[str]) -> list[tuple[Path, Path | None]]:
    """The files ``fspo validate PATHS`` checks, each with the users file training pairs it with:
    a folder's prefs.jsonl and users.jsonl, a prefs file and the users.jsonl beside it (each once)."""
    from fspo.data.io import prefs_file_for, users_file_for

    targets: dict[Path, Path | None] = {}
    for arg in paths:
        try:
            prefs, users = prefs_file_for(arg), users_file_for(arg)
        except DataError:  # unreadable: validate_file reports why
            prefs, users = Path(arg), None
        targets.setdefault(prefs, users)
        if users is not None:
            targets.setdefault(users, None)
    return list(targets.items())


def run_validate(args: argparse.Namespace) -> int:
    from collections import Counter

    from fspo.data.io import looks_like_users_file, read_preferences, validate_file

    bad = False
    for target, users in validate_targets(args.files):
        problems = validate_file(target, users)
        for prob in problems[:MAX_PROBLEMS]:
            print(prob)
        if len(problems) > MAX_PROBLEMS:
            print(printable(f"{target}: {len(problems) - MAX_PROBLEMS} more problems not shown"))
        bad |= bool(problems)
        if not problems and args.shots is not None and not looks_like_users_file(target):
            counts = Counter(r.user_id for r in read_preferences(target))
            for user, n in sorted(counts.items()):
                if n < args.shots + 1:
                    print(
                        printable(
                            f"{target}: user_id: user {user!r} has {n} preferences, fewer than shots+1={args.shots + 1}"
                        )
                    )
        if not problems:
            print(printable(f"{target}: ok"), file=sys.stderr)
    return 2 if bad else 0


def run_export(args: argparse.Namespace) -> int:
    from fspo.data.io import export_trl, load_data

    data = load_data(args.data)
    rows = data.prefs if args.split is None else data.split(args.split)
    try:
        n = export_trl(rows, args.out)
    except OSError as exc:
        raise FspoError(f"{args.out}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {n} rows to {args.out}")
    return 0
