"""Resolve a model spec to ``(model, tokenizer)``: ``tiny``, ``smollm2``, or a local HF folder.

Nothing is fetched from a model hub: a spec that is neither a preset nor an existing folder is
an error, not a download.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fspo.data.runs import FINAL_DIR, RUN_FILE
from fspo.errors import FspoError
from fspo.models import DTYPE_NAMES

PRESETS = ("tiny", "smollm2")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise FspoError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_NAMES)}") from None


def model_dir(spec: str) -> Path | None:
    """The on-disk folder behind a spec (None for ``tiny``, which lives only in memory)."""
    if spec == "tiny":
        return None
    if spec == "smollm2":
        from fspo.models.embedded import converted_dir

        return converted_dir()
    path = Path(spec)
    if (path / RUN_FILE).exists() and (path / FINAL_DIR / "config.json").exists():
        return path / FINAL_DIR  # a training run folder: its final model
    if (path / "config.json").exists():
        return path
    if (path / "adapter_config.json").exists():
        return path
    raise FspoError(
        f"{spec}: not a model: use 'tiny', 'smollm2' or a local Hugging Face folder with config.json "
        "(nothing is downloaded from a hub)"
    )


def load_tokenizer(spec: str):
    if spec == "tiny":
        from fspo.models.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, dtype: str = "float32", seed: int = 0):
    """Load ``(model, tokenizer)``. A folder with a LoRA adapter is merged onto its base model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer(spec)
    if spec == "tiny":
        from fspo.models.tiny import build_tiny_model

        return build_tiny_model(tok, seed=seed).to(resolve_dtype(dtype)), tok
    from transformers import AutoModelForCausalLM

    path = model_dir(spec)
    if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
