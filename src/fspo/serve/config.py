"""``fspo personalize`` and ``fspo serve`` options: dataclasses for the CLI, YAML and Python."""

from __future__ import annotations

from dataclasses import dataclass

from fspo.config import Config, opt
from fspo.data.prompts import LAYOUTS
from fspo.models import device_option, dtype_option

MAX_NEW_TOKENS = 8192


@dataclass
class PersonalizeConfig(Config):
    model: str = opt("", "run folder (fspo train output), model folder, 'tiny' or 'smollm2'", required=True)
    prefs: str = opt("", "the user's preferences (JSONL/JSON/Parquet, canonical format)", required=True)
    user: str | None = opt(None, "which user_id in --prefs (required when the file holds several users)")
    layout: str | None = opt(None, "override the run's prompt layout", choices=LAYOUTS)
    shots: int | None = opt(None, "override the run's number of shots (the most recent pairs are used)", ge=0)
    max_new_tokens: int = opt(200, "new tokens at most", ge=1, le=MAX_NEW_TOKENS)
    temperature: float = opt(0.0, "0 (or below 1e-5) is greedy", ge=0.0, le=2.0)
    seed: int = opt(0, "sampling seed", ge=0, le=2**63 - 1)
    show_prompt: bool = opt(False, "print the rendered prompt to stderr")
    device: str = device_option()
    dtype: str = dtype_option()


@dataclass
class ServeConfig(Config):
    model: str = opt("", "run folder, model folder, 'tiny' or 'smollm2'", required=True)
    db: str = opt("fspo_serve.sqlite", "SQLite file for users and preferences")
    host: str = opt("127.0.0.1", "address to listen on")
    port: int = opt(8000, "port (0: any free port, printed at start)", ge=0, le=65535)
    api_key: list[str] = opt(
        help="admin key (repeatable). Visible to other users of this machine in the process list: prefer "
        "--api-key-file or the environment variable FSPO_API_KEY",
        default_factory=list,
    )
    api_key_file: str | None = opt(None, "file with admin keys, one per line (keep it mode 0600)")
    cache_users: int = opt(32, "users whose prefix KV cache is kept (LRU)", ge=0, le=100_000)
    max_batch: int = opt(
        16,
        "sequences decoded together (continuous batching; more requests wait for a free row); 1 serves one at a time",
        ge=1,
        le=1024,
    )
    layout: str | None = opt(None, "override the run's prompt layout", choices=LAYOUTS)
    shots: int | None = opt(None, "override the run's number of shots", ge=0)
    name: str | None = opt(None, "model name reported by /v1/models (default: --model)")
    device: str = device_option()
    dtype: str = dtype_option()
    engine: str | None = opt(
        None,
        "generate through an OpenAI-compatible engine serving --model, URL[#model] (e.g. vLLM at "
        "http://127.0.0.1:8001/v1#fspo): users, auth and prompt assembly stay here (--model's run record and "
        "tokenizer; its weights are not loaded), the rendered prompt goes to the engine's /v1/completions; key "
        "from $OPENAI_API_KEY",
    )
    engine_timeout: float = opt(120.0, "seconds per engine request", gt=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine is not None:
            from fspo.llm.endpoints import parse_endpoint

            parse_endpoint(self.engine, "engine")


@dataclass
class StudyServeConfig(Config):
    db: str = opt("", "the study's SQLite file, made by 'fspo study init'", required=True)
    host: str = opt("127.0.0.1", "address to listen on")
    port: int = opt(8080, "port (0: any free port, printed at start)", ge=0, le=65535)
    device: str = device_option()
    dtype: str = dtype_option()
