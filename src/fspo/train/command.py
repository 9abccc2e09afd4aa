"""``fspo train``: SFT / DPO / IPO on few-shot episodes."""

from __future__ import annotations

import argparse

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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file with sections data/model/optim/loss and run options")
    from fspo.train.config import TrainConfig

    add_config_arguments(p, TrainConfig, ALIASES)
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5 loss.beta=0.01")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fspo.config import load_config, overrides_from_args
    from fspo.train.config import TrainConfig
    from fspo.train.trainer import train

    cfg = load_config(TrainConfig, args.config, overrides_from_args(args))
    train(cfg)
    return 0
