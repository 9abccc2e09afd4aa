"""``fspo eval``: reward accuracy vs shots and judged win rates of the paper's method rows."""

from __future__ import annotations

import argparse

from fspo.config import add_config_arguments

# Flag spellings kept from before the config system (``--method-model`` is repeatable).
ALIASES = {"method-model": "method_models", "no-reward-accuracy": "!reward_accuracy", "quiet": "!progress"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from fspo.eval.config import EvalConfig
    from fspo.eval.methods import METHODS

    p = sub.add_parser(
        "eval",
        help="evaluate methods on held-out users: reward accuracy vs shots, judged win rates, report",
        description="Evaluate the paper's rows on held-out users. Methods: "
        + "; ".join(f"{m.name}: {m.help}" for m in METHODS.values())
        + ". Writes OUT/eval.json, OUT/report.md and PNG plots; model calls are cached in OUT/cache.sqlite. "
        "Options come from defaults, then --config YAML, then flags and section.field=value overrides.",
    )
    add_config_arguments(p, EvalConfig, ALIASES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fspo.config import config_from_args
    from fspo.eval.config import EvalConfig
    from fspo.eval.runner import run_eval

    cfg = config_from_args(EvalConfig, args)
    result = run_eval(cfg)
    for name, wr in result["win_rate"].items():
        lo, hi = wr["ci"]
        print(
            f"{name}: win rate vs {cfg.baseline} {100 * wr['win_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"(W/T/L {wr['wins']}/{wr['ties']}/{wr['losses']}, sign-test p={wr['sign_test_p']:.3g}, n={wr['n']})"
        )
    return 0
