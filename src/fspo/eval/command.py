"""``fspo eval``: reward accuracy vs shots and judged win rates of the paper's method rows."""

from __future__ import annotations

import argparse


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    from fspo.eval.methods import METHODS

    p = sub.add_parser(
        "eval",
        help="evaluate methods on held-out users: reward accuracy vs shots, judged win rates, report",
        description="Evaluate the paper's rows on held-out users. Methods: "
        + "; ".join(f"{m.name}: {m.help}" for m in METHODS.values())
        + ". Writes OUT/eval.json, OUT/report.md and PNG plots; model calls are cached in OUT/cache.sqlite.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default="examples/reviews", help="dataset folder (prefs.jsonl + users.jsonl)")
    p.add_argument("--methods", default="base,fewshot,fspo-ipo", help="comma-separated method names")
    p.add_argument("--model", default=None, help="trained run/model folder for the rows that need one")
    p.add_argument(
        "--method-model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="model for one method (repeatable), e.g. prefft=runs/p pooled=runs/pool",
    )
    p.add_argument("--base-model", default=None, help="base model (default: the run's base model, else smollm2)")
    p.add_argument("--baseline", default="base", help="method every row is compared against")
    p.add_argument("--shots", type=int, default=None, help="N shots for generation (default: the run's N, else 4)")
    p.add_argument("--shots-curve", type=_int_list, default=[0, 1, 2, 4, 8], help="N values of the reward curve")
    p.add_argument("--judge", choices=["attribute", "llm"], default="attribute", help="pairwise judge")
    p.add_argument(
        "--judge-model", default=None, help="LLM judge: scripted | smollm2 | DIR | http://host:port/v1#model"
    )
    p.add_argument("--users", type=int, default=0, help="held-out users to evaluate (0 = all)")
    p.add_argument("--queries", type=int, default=0, help="queries per user (0 = all)")
    p.add_argument("--no-reward-accuracy", action="store_true", help="skip the reward-accuracy curve")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation length")
    p.add_argument("--max-length", type=int, default=1024, help="prompt+answer token budget (oldest shots dropped)")
    p.add_argument("--batch-size", type=int, default=8, help="generation batch size")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--bootstrap-unit", choices=["user", "query"], default="user", help="what the bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed for episodes and bootstrap")
    p.add_argument("--out", default="eval", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fspo.errors import FspoError
    from fspo.eval.methods import parse_methods
    from fspo.eval.runner import EvalConfig, run_eval

    method_models = {}
    for item in args.method_model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise FspoError(f"--method-model expects NAME=PATH, got {item!r}")
        method_models[name.strip()] = path.strip()
    cfg = EvalConfig(
        data=args.data,
        methods=parse_methods(args.methods),
        model=args.model,
        method_models=method_models,
        base_model=args.base_model,
        baseline=args.baseline,
        shots=args.shots,
        shots_curve=args.shots_curve,
        judge=args.judge,
        judge_model=args.judge_model,
        users=args.users,
        queries=args.queries,
        reward_accuracy=not args.no_reward_accuracy,
        max_new_tokens=args.max_new_tokens,
        max_length=args.max_length,
        batch_size=args.batch_size,
        n_boot=args.n_boot,
        bootstrap_unit=args.bootstrap_unit,
        seed=args.seed,
        out=args.out,
        progress=not args.quiet,
    )
    result = run_eval(cfg)
    for name, wr in result["win_rate"].items():
        lo, hi = wr["ci"]
        print(
            f"{name}: win rate vs {cfg.baseline} {100 * wr['win_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"(W/T/L {wr['wins']}/{wr['ties']}/{wr['losses']}, sign-test p={wr['sign_test_p']:.3g}, n={wr['n']})"
        )
    return 0
