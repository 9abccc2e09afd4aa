"""``fspo synth`` options: one dataclass for the CLI, YAML (``--config``) and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from fspo.config import Config, opt
from fspo.models import device_option, dtype_option

BACKENDS = ("local", "openai", "scripted", "none")


@dataclass
class SynthConfig(Config):
    out: str = opt("", "output folder: prefs.jsonl, users.jsonl, diagnostics/, the call cache", required=True)
    domain: str = opt("reviews", "reviews | elix | roleplay | path to a domain YAML")
    users: int = opt(8, "synthetic users", ge=1)
    questions: int = opt(20, "questions", ge=1)
    seed: int = opt(0, "seed of every random choice", ge=0)
    heldout_users: float = opt(0.25, "fraction of users marked test (whole users)", ge=0.0, lt=1.0)
    heldout_questions: float = opt(0.0, "fraction of questions marked test (for every user)", ge=0.0, lt=1.0)
    offtopic_pairs: float = opt(
        0.25,
        "share of each training user's training questions that get one extra off-topic pair (meta.kind "
        "'offtopic'): chosen is the user's chosen answer, rejected the same user's chosen answer to another "
        "question, so answering the question asked is part of what is preferred; 0 turns them off",
        ge=0.0,
        le=1.0,
    )
    repetition_pairs: float = opt(
        0.25,
        "share of each training user's training questions that get one extra repetition pair (meta.kind "
        "'repetition'): chosen is the user's chosen answer, rejected the same answer with one of its sentences "
        "repeated in place of what follows, so a loop is dispreferred; 0 turns them off",
        ge=0.0,
        le=1.0,
    )
    backend: str = opt(
        "local",
        "local: in-process transformers; openai: any OpenAI-compatible server; scripted: rule-based fake for "
        "tests; none: no model (templated reviews with attribute labels only)",
        choices=BACKENDS,
    )
    models: list[str] = opt(
        help="model spec (local: smollm2 | tiny | folder; openai: the served model name); repeat for an ensemble "
        "(default: smollm2 for local)",
        default_factory=list,
    )
    engine: str | None = opt(
        None,
        "generate through an OpenAI-compatible engine, URL[#model] (e.g. http://127.0.0.1:8000/v1#fspo; "
        "no #model: --models on that server, else the first it serves); sets --backend openai; key from "
        "$OPENAI_API_KEY",
    )
    judge_model: str | None = opt(None, "model that labels (default: the first model); a URL[#model] is an engine")
    judge_engine: str | None = opt(None, "label through another engine, URL[#model] (default: the generator's)")
    base_url: str | None = opt(
        None,
        "old spelling of --engine's URL (with --backend openai --models NAME; default: $OPENAI_BASE_URL, "
        "else http://127.0.0.1:8080/v1)",
    )
    concurrency: int = opt(8, "openai: requests in flight", ge=1)
    timeout: float = opt(120.0, "openai: seconds per request", gt=0.0)
    batch_size: int = opt(8, "local: prompts per generation batch", ge=1)
    device: str = device_option("local: ")
    dtype: str = dtype_option("local: ")
    responses: str | None = opt(
        None, "override the domain's response source", choices=["templates", "steered", "views"]
    )
    labeler: str | None = opt(None, "override the domain's labeler", choices=["attribute", "judge"])
    judge_mode: str = opt(
        "auto",
        "auto: log-prob verdicts where the backend offers them, else parsed text",
        choices=["auto", "text", "logprob"],
    )
    refine: bool | None = opt(None, "persona refinement on/off (default: the domain's setting)")
    questions_file: str | None = opt(None, "extra questions: .txt (one per line) or .jsonl")
    resume: bool = opt(True, "replay the call cache of an earlier run on this --out (false: start over)")
    embed: bool = opt(True, "MiniLM similarity diagnostics")
    plots: bool = opt(True, "diagnostic plots")
    progress: bool = opt(True, "progress bars")

    def __post_init__(self) -> None:
        self.out = str(self.out)  # the Python API may pass a Path
        super().__post_init__()
        from fspo.config import ConfigError
        from fspo.llm.endpoints import is_endpoint, parse_endpoint

        for name in ("engine", "judge_engine", "base_url"):
            if getattr(self, name) is not None:
                parse_endpoint(getattr(self, name), name)  # a bad URL is one line naming the option
        if self.judge_model is not None and is_endpoint(self.judge_model):
            parse_endpoint(self.judge_model, "judge_model")
        if self.engine is not None:
            if self.backend in ("scripted", "none"):
                raise ConfigError(f"engine: generates through a server; it conflicts with --backend {self.backend}")
            if parse_endpoint(self.engine, "engine").model and self.models:
                raise ConfigError("engine: names the model after '#' and --models names more; give one of them")
            self.backend = "openai"
