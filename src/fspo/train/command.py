"""``fspo train``: SFT / DPO / IPO on few-shot episodes."""

from __future__ import annotations

import argparse
import shlex

from fspo.config import add_config_arguments

ALIASES = {
    "data": "data.path",
    "model": "model.name",
    "loss": "loss.name",
    "shots": "data.shots",
    "layout": "data.layout",
    "steps": "optim.steps",
    "lr": "optim.lr",
    "beta": "loss.beta",
    "lora": "model.lora",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on few-shot preference episodes (SFT, DPO, IPO, or SFT then DPO/IPO)",
        description="Train on few-shot episodes (N shots + 1 query pair, all from one user). Options come from "
        "defaults, then --config YAML, then flags and section.field=value overrides.",
    )
    from fspo.train.config import TrainConfig

    add_config_arguments(p, TrainConfig, ALIASES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fspo.config import config_from_args
    from fspo.train.config import TrainConfig
    from fspo.train.trainer import train

    cfg = config_from_args(TrainConfig, args)
    train(cfg, command="fspo " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["train"])))
    return 0
