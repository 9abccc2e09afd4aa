"""Training configuration: the YAML schema, the CLI flags and the record of a run."""

from __future__ import annotations

from dataclasses import dataclass, field

from fspo.config import Config, ConfigError, opt
from fspo.data.prompts import LAYOUTS, layout_of
from fspo.data.runs import DEFAULT_LAYOUT, DEFAULT_MAX_LENGTH, DEFAULT_REDUCTION, DEFAULT_SHOTS, REDUCTIONS
from fspo.models import DTYPE_NAMES


@dataclass
class DataConfig(Config):
    path: str = opt("examples/reviews", "prefs.jsonl, or a folder with prefs.jsonl (+ users.jsonl)")
    shots: int = opt(DEFAULT_SHOTS, "N: shots (labeled preferences of the same user) in each episode's context", ge=0)
    resamples: int | None = opt(None, "contexts per query preference (default 2(N+1), as in the paper)", ge=1)
    short_users: str = opt(
        "shrink", "users with fewer than N+1 preferences: shrink N or skip", choices=["shrink", "skip"]
    )
    layout: str = opt(DEFAULT_LAYOUT, "prompt layout (fspo.data.prompts)", choices=list(LAYOUTS))
    chat_template: bool = opt(False, "wrap the FSPO prompt in the tokenizer's chat template (instruct models)")
    max_length: int = opt(
        DEFAULT_MAX_LENGTH,
        "tokens per sequence, prompt + answer (the one budget; eval and serving keep it too); whole shots are "
        "dropped, oldest first, to fit",
        ge=16,
    )
    heldout_users: float = opt(
        0.0,
        "extra fraction of training users to hold out as unseen users for evaluation (besides split=test users)",
        ge=0.0,
        lt=1.0,
    )
    queries_per_tree: int = opt(
        1,
        "K > 1: shared-shot episode trees: up to K queries of one user share one set of shots, run as one sequence "
        "(shots once, each query and its two answers a branch; exact); a micro-batch then holds optim.batch_size "
        "trees. 1 = separate episodes",
        ge=1,
    )
    eval_episodes: int = opt(32, "held-out episodes scored for reward accuracy during training (0 = none)", ge=0)
    rat_contrast: bool = opt(
        False,
        "rat layout: the rejected completion carries the description of a user who would prefer the rejected "
        "answer (its meta.rejected_steer or rejected_attributes, the description training users with them share), so the "
        "preference loss trains the description too (fspo.data.rat_contrast)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rat_contrast and not layout_of(self.layout).writes_description:
            raise ConfigError(f"rat_contrast: needs the rat layout (got layout {self.layout!r})")


@dataclass
class ModelConfig(Config):
    name: str = opt("smollm2", "tiny | smollm2 | path to a local Hugging Face model folder")
    dtype: str = opt(
        "float32",
        "float32 on CPU; bfloat16 is a GPU option (about 10x slower on CPUs without bf16 units)",
        choices=DTYPE_NAMES,
    )
    lora: bool = opt(False, "train LoRA adapters (peft); the reference is the same model with adapters disabled")
    lora_r: int = opt(16, "LoRA rank", ge=1)
    lora_alpha: int = opt(32, "LoRA alpha", ge=1)
    lora_dropout: float = opt(0.0, "LoRA dropout", ge=0.0, lt=1.0)
    gradient_checkpointing: bool = opt(False, "recompute activations in backward: less memory, more time")
    ref: str | None = opt(None, "reference model for DPO/IPO (default: the model being trained, frozen at its start)")


@dataclass
class OptimConfig(Config):
    optimizer: str = opt("adamw", "adamw | rmsprop (the reference code's) | sgd", choices=["adamw", "rmsprop", "sgd"])
    lr: float = opt(5e-5, "peak learning rate of the preference stage (or of the only stage)", gt=0.0)
    sft_lr: float | None = opt(None, "learning rate of the SFT stage in a two-stage recipe (default: lr)", gt=0.0)
    weight_decay: float = opt(0.0, "weight decay", ge=0.0)
    warmup_steps: int = opt(5, "linear warm-up steps", ge=0)
    schedule: str = opt(
        "constant", "after warm-up: constant (reference) | cosine | linear", choices=["constant", "cosine", "linear"]
    )
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)", ge=0.0)
    batch_size: int = opt(
        2,
        "episodes (pairs) per micro-batch on each process (TRL's per-device batch size): an optimizer step takes "
        "batch_size x processes x grad_accum pairs",
        ge=1,
    )
    grad_accum: int = opt(1, "micro-batches per optimizer step", ge=1)
    steps: int = opt(20, "optimizer steps of the preference stage (or of the only stage)", ge=1)
    sft_steps: int | None = opt(None, "optimizer steps of the SFT stage in a two-stage recipe (default: steps)", ge=1)
    shared_prefix: bool = opt(
        False, "run each pair as one sequence: the prompt once, chosen and rejected masked from each other"
    )


@dataclass
class LossConfig(Config):
    name: str = opt(
        "ipo",
        "sft | dpo | ipo | sft+dpo | sft+ipo (two stages: SFT, then the preference loss with the SFT model as reference)",
        choices=["sft", "dpo", "ipo", "sft+dpo", "sft+ipo"],
    )
    beta: float = opt(0.1, "β of DPO/IPO (reference code: IPO β=0.01 with sum reduction)", gt=0.0)
    label_smoothing: float = opt(0.0, "DPO conservative label smoothing ε", ge=0.0, lt=0.5)
    reduction: str = opt(
        DEFAULT_REDUCTION, "token log-prob reduction: mean (TRL's IPO) | sum (reference code)", choices=list(REDUCTIONS)
    )
    sft_weight: float = opt(
        0.0, "add this weight × NLL of the chosen completion to the preference loss (keeps generation fluent)", ge=0.0
    )
    sft_rejected: bool = opt(False, "SFT also on rejected completions, as the reference code does (off: chosen only)")
    description_weight: float = opt(
        0.0,
        "add this weight × NLL of the whole chosen completion (response header and, under rat, the user "
        "description, then the answer: the SFT stage's loss) to the preference loss, so the preference stage keeps "
        "training RAT's user description, which sft_weight's differing tokens leave out",
        ge=0.0,
    )


@dataclass
class TrainConfig(Config):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    out: str = opt("runs/fspo", "run folder: checkpoints, metrics.jsonl, final model")
    seed: int = opt(0, "seed for episode sampling, data order and initialization", ge=0)
    log_every: int = opt(1, "write metrics every N steps", ge=1)
    eval_every: int = opt(10, "score held-out reward accuracy every N steps (0 = only at the end)", ge=0)
    save_every: int = opt(10, "checkpoint every N steps (resume after a kill)", ge=0)
    keep_checkpoints: int = opt(2, "checkpoints kept per stage while it trains (0 = all)", ge=0)
    keep_checkpoints_after_finish: bool = opt(
        False, "keep a stage's checkpoints after its final model is written (resuming no longer needs them)"
    )
    overwrite: bool = opt(
        False, "start over in an --out that holds a run of another configuration (deletes that run's files)"
    )
    report_to: str = opt("none", "none | tensorboard | wandb", choices=["none", "tensorboard", "wandb"])
    progress: bool = opt(True, "show progress bars")

    def stages(self) -> list[str]:
        return self.loss.name.split("+")
