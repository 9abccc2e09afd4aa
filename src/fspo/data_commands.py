"""``fspo validate``, ``fspo export`` and ``fspo from-texts``: check data files, convert to TRL's format (raw
pairs or FSPO episodes), make a dataset from people's own writing."""

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

    e = sub.add_parser(
        "export",
        help="export preferences (or rendered FSPO episodes) as TRL prompt/chosen/rejected rows",
        description="Without --episodes: one row per labeled preference. With --episodes: one row per FSPO episode "
        "(the prompt holds the user's N shots and the query; chosen/rejected are the completions fspo trains on), "
        "sampled like fspo train samples them, for TRL's DPOTrainer. Output: .jsonl, .parquet, or a datasets folder.",
    )
    e.add_argument("data", help="prefs.jsonl (or a folder holding it)")
    e.add_argument("--out", required=True, help="output: FILE.jsonl, FILE.parquet or a datasets folder")
    e.add_argument("--split", default=None, choices=("train", "test", "validation"), help="only rows of this split")
    e.add_argument("--episodes", action="store_true", help="rendered FSPO episodes instead of raw pairs")
    e.add_argument("--shots", type=int, default=4, help="--episodes: N shots per episode (default: 4)")
    e.add_argument("--layout", default="fspo", help="--episodes: prompt layout (default: fspo)")
    e.add_argument("--resamples", type=int, default=None, help="--episodes: contexts per query (default: 2(N+1))")
    e.add_argument("--heldout-users", type=float, default=0.0, help="--episodes: extra fraction of users held out")
    e.add_argument("--seed", type=int, default=0, help="--episodes: sampling seed (default: 0)")
    e.add_argument("--model", default=None, help="--episodes: fit shots to --max-length with this model's tokenizer")
    e.add_argument("--max-length", type=int, default=None, help="--episodes: tokens per sequence, prompt + answer")
    e.set_defaults(func=run_export)

    from fspo.config import add_config_arguments
    from fspo.synth.from_texts import FromTextsConfig

    f = sub.add_parser(
        "from-texts",
        help="make a dataset from people's own writing: chosen = their text, rejected = another person's",
        description="Read rows person_id, prompt, text (JSONL, JSON, CSV, Parquet or a datasets folder) and write "
        "a dataset folder (prefs.jsonl + users.jsonl) that fspo train and fspo eval read: for every text, chosen is "
        "the author's own text and rejected another person's text for the same prompt, else for the most similar "
        "prompt (or, with --rejected base, the base model's answer). Whole persons are held out as split=test. "
        "Options come from defaults, then --config YAML, then flags and section.field=value overrides.",
    )
    add_config_arguments(f, FromTextsConfig, {"quiet": "!progress"})
    f.set_defaults(func=run_from_texts)


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

    if args.episodes:
        return run_export_episodes(args)
    data = load_data(args.data)
    rows = data.prefs if args.split is None else data.split(args.split)
    try:
        n = export_trl(rows, args.out)
    except OSError as exc:
        raise FspoError(f"{args.out}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {n} rows to {args.out}")
    return 0


def run_export_episodes(args: argparse.Namespace) -> int:
    from fspo.data.episode_export import episode_rows, write_rows
    from fspo.data.io import load_data
    from fspo.data.prompts import layout_of
    from fspo.data.runs import DEFAULT_MAX_LENGTH

    if args.shots < 0 or (args.resamples is not None and args.resamples < 1):
        raise FspoError("--shots must be >= 0 and --resamples >= 1")
    if not 0.0 <= args.heldout_users < 1.0:
        raise FspoError(f"--heldout-users must be in [0, 1), got {args.heldout_users}")
    if args.split not in (None, "train", "test"):
        raise FspoError("--episodes exports the train or the test split")
    try:
        layout_of(args.layout)
    except ValueError as exc:
        raise FspoError(f"--layout: {exc}") from None
    tokenizer = None
    if args.model:
        from fspo.models.registry import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    data = load_data(args.data)
    rows = list(
        episode_rows(
            data,
            args.split or "train",
            args.shots,
            args.layout,
            args.seed,
            args.resamples,
            args.heldout_users,
            tokenizer,
            args.max_length or DEFAULT_MAX_LENGTH,
        )
    )
    try:
        fmt = write_rows(rows, args.out)
    except OSError as exc:
        raise FspoError(f"{args.out}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {len(rows)} {args.split or 'train'} episodes ({fmt}) to {args.out}")
    return 0


def run_from_texts(args: argparse.Namespace) -> int:
    from fspo.config import config_from_args
    from fspo.synth.from_texts import FromTextsConfig, run_from_texts

    cfg = config_from_args(FromTextsConfig, args)
    conv = run_from_texts(cfg)
    st = conv.stats
    for note in conv.notes:
        print(printable(f"note: {note}"))
    kinds = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in st["rejected"].items())
    print(
        printable(
            f"read {st['texts']} texts by {st['persons']} persons from {cfg.texts}; wrote {st['pairs']} pairs "
            f"(train {st['train_pairs']}, test {st['test_pairs']}; rejected: {kinds}) and "
            f"{len(conv.users)} users ({len(st['heldout_persons'])} held out{': ' if st['heldout_persons'] else ''}"
            f"{', '.join(st['heldout_persons'])}) "
            f"to {cfg.out}"
        )
    )
    return 0
