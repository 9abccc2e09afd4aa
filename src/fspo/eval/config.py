"""``fspo eval`` options: one dataclass for the CLI, YAML (``--config``) and the Python API."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fspo.config import Config, opt
from fspo.data.runs import REDUCTIONS
from fspo.eval.methods import METHODS
from fspo.eval.winrate import BOOTSTRAP_UNITS
from fspo.models import device_option, dtype_option

JUDGES = ("attribute", "llm")


@dataclass
class EvalConfig(Config):
    data: str = opt("examples/reviews", "dataset folder (prefs.jsonl + users.jsonl)")
    methods: list[str] = opt(
        help="method rows to evaluate (comma-separated)", default_factory=lambda: ["base", "fewshot", "fspo-ipo"]
    )
    model: str | None = opt(None, "trained run or model folder for every row that needs one")
    method_models: dict[str, str] = opt(
        help="model for one method, NAME=PATH (repeatable), e.g. prefft=runs/p", default_factory=dict
    )
    engine: str | None = opt(
        None,
        "generate the answers of every row that runs --model through an OpenAI-compatible engine serving that "
        "model, URL[#model] (e.g. http://127.0.0.1:8000/v1#fspo); reward accuracy is still scored locally",
    )
    method_engines: dict[str, str] = opt(
        help="generate one method's answers through an engine serving its model, NAME=URL[#model] (repeatable), "
        "e.g. fspo-ipo=http://127.0.0.1:8000/v1#fspo",
        default_factory=dict,
    )
    base_model: str | None = opt(None, "base model (default: the run's base model, else smollm2)")
    baseline: str = opt("base", "method every row is compared against", choices=list(METHODS))
    shots: int | None = opt(None, "N shots for generation (default: the run's N, else 4)", ge=0)
    shots_curve: list[int] = opt(help="N values of the reward-accuracy curve", default_factory=lambda: [0, 1, 2, 4, 8])
    judge: str = opt("attribute", "pairwise judge", choices=JUDGES)
    judge_model: str | None = opt(None, "LLM judge: scripted | tiny | smollm2 | DIR | http://host:port/v1#model")
    users: int = opt(0, "held-out users to evaluate, evenly spread (0 = all)", ge=0)
    queries: int = opt(0, "queries per user (0 = all)", ge=0)
    reward_accuracy: bool = opt(True, "score the reward-accuracy curve")
    heldout_questions: bool = opt(True, "also score held-out questions of training users (split=test rows)")
    reward_reduction: str = opt("mean", "reduction of untrained models' log-likelihood comparison", choices=REDUCTIONS)
    max_new_tokens: int = opt(64, "generation length", ge=1)
    description_tokens: int = opt(
        64, "extra generation length of rows that write a user description before the answer (RAT)", ge=0
    )
    max_length: int | None = opt(
        None, "tokens per sequence, prompt + answer; oldest shots dropped to fit (default: the trained model's)", ge=16
    )
    batch_size: int = opt(8, "generation batch size", ge=1)
    device: str = device_option()
    dtype: str = dtype_option()
    n_boot: int = opt(2000, "bootstrap resamples", ge=1)
    ci_level: float = opt(0.95, "confidence level of the intervals", gt=0.0, lt=1.0)
    bootstrap_unit: str = opt("user", "what the bootstrap resamples", choices=BOOTSTRAP_UNITS)
    seed: int = opt(0, "seed for episodes and bootstrap", ge=0)
    out: str = opt("eval", "output folder")
    progress: bool = opt(True, "progress output")

    def __post_init__(self) -> None:
        super().__post_init__()
        from fspo.eval.methods import parse_methods

        self.methods = parse_methods(self.methods)
        from fspo.config import ConfigError
        from fspo.llm.endpoints import is_endpoint, parse_endpoint

        if self.engine is not None:
            parse_endpoint(self.engine, "engine")
        for name, url in self.method_engines.items():
            if name not in self.methods:
                raise ConfigError(f"method_engines: {name!r} is not among the methods ({', '.join(self.methods)})")
            parse_endpoint(url, f"method_engines: {name}")
        if self.judge_model is not None and is_endpoint(self.judge_model):
            parse_endpoint(self.judge_model, "judge_model")
        if any(n < 0 for n in self.shots_curve):
            from fspo.config import ConfigError

            raise ConfigError(f"shots_curve: shot counts must be >= 0, got {self.shots_curve}")

    def to_dict(self) -> dict:
        return asdict(self)
