"""``fspo select``: pick a run's checkpoint by the judge on validation users."""

from __future__ import annotations

import argparse

from fspo.config import add_config_arguments

ALIASES = {"quiet": "!progress"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from fspo.eval.selection import SelectConfig

    p = sub.add_parser(
        "select",
        help="pick a trained run's checkpoint by judged win rate on validation users (never test users)",
        description="Judge every kept checkpoint of a run's last stage, and its final model, against the base "
        "model on validation users: users the run held out (--data.heldout_users F) that the data does not mark "
        "test. The best is linked as RUN/selected (a model folder: fspo eval --model RUN/selected); the table is "
        "in RUN/select/selection.json. Train with --keep_checkpoints_after_finish true and a --save_every that "
        "gives the steps to choose from.",
    )
    add_config_arguments(p, SelectConfig, ALIASES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fspo.config import config_from_args
    from fspo.eval.selection import SelectConfig, select_checkpoint

    select_checkpoint(config_from_args(SelectConfig, args))
    return 0
