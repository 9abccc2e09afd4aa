"""Resolve a model spec to ``(model, tokenizer)``: ``tiny``, ``smollm2``, or a local HF folder.

Nothing is fetched from a model hub: a spec that is neither a preset nor an existing folder is
an error, not a download.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from fspo.data.runs import FINAL_DIR, RUN_FILE
from fspo.errors import FspoError
from fspo.models import DEVICE_NAMES, DTYPE_NAMES

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


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if available, else mps if available, else cpu (training's choice too). Asking
    for a device this machine lacks is a one-line error, not a CUDA traceback at the first tensor."""
    name = (name or "auto").strip().lower()
    if name not in DEVICE_NAMES and not name.startswith("cuda:"):
        raise FspoError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_NAMES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise FspoError(f"--device {name}: CUDA is not available ({why}); use --device auto or cpu")
    if name == "mps" and not _mps_available():
        raise FspoError("--device mps: Apple MPS is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def check_dtype_for_device(dtype: str, device: torch.device) -> None:
    """Half precision on a CPU runs but is about 10x slower than float32 there: say so once."""
    if device.type == "cpu" and resolve_dtype(dtype) != torch.float32:
        print(
            f"fspo: warning: --dtype {dtype} on CPU is about 10x slower than float32 (most CPUs lack half-precision "
            "units); use --dtype float32 on CPU",
            file=sys.stderr,
        )


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


def load_model(spec: str, dtype: str = "float32", seed: int = 0, device: str | None = None):
    """Load ``(model, tokenizer)`` on ``device`` (``auto|cpu|cuda|mps``, see :func:`resolve_device`;
    None: on the CPU, for a caller that places the model itself, as training does through
    accelerate). A folder with a LoRA adapter is merged onto its base model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch_dtype = resolve_dtype(dtype)
    target = torch.device("cpu") if device is None else resolve_device(device)  # fails before weights load
    if device is not None:
        check_dtype_for_device(dtype, target)
    tok = load_tokenizer(spec)
    if spec == "tiny":
        from fspo.models.tiny import build_tiny_model

        return build_tiny_model(tok, seed=seed).to(device=target, dtype=torch_dtype), tok
    from transformers import AutoModelForCausalLM

    path = model_dir(spec)
    if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch_dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model = model.to(target)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
