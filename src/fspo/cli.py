"""The ``fspo`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``add_parser(subparsers)`` and keeps heavy imports (torch,
transformers) inside its handler so ``fspo --help`` stays instant. User errors (:class:`FspoError`)
print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fspo import __version__
from fspo.errors import FspoError

SUBCOMMAND_MODULES = (
    "fspo.demo",
    "fspo.synth.command",
    "fspo.data_commands",
    "fspo.train.command",
    "fspo.eval.command",
    "fspo.eval.select_command",
    "fspo.serve.command",
    "fspo.serve.study.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fspo",
        description="Few-Shot Preference Optimization: personalize a language model to a user from a few labeled "
        "preferences (arXiv 2502.19312).",
    )
    parser.add_argument("--version", action="version", version=f"fspo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (a trained model's card records it)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FspoError as exc:
        print(f"fspo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fspo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
