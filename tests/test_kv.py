"""The in-place KV cache (fspo.llm.kv): the same bits as transformers' own cache, growth, fallbacks."""

from __future__ import annotations

import pytest
import torch

from fspo.llm.base import GenerationParams
from fspo.llm.kv import cache_keyword, growing_cache
from fspo.llm.local import LocalBackend, generate_kwargs

PROMPTS = ["the food was", "a long review of the place, with many words in it and more", "ok", "service"]


def _generate(model, tok, room: int | None, params: GenerationParams):
    """(token ids, per-step logits) of one left-padded batch; ``room`` None: transformers' cache."""
    backend = LocalBackend(model, tok, batch_size=len(PROMPTS))
    enc = backend._left_padded(PROMPTS)
    kwargs = generate_kwargs(params, tok)
    if room is not None:
        kwargs[cache_keyword(model)] = growing_cache(model, room)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(7)
        out = model.generate(**enc, **kwargs, return_dict_in_generate=True, output_logits=True)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("room", [12, 1])  # 1: the buffers double several times during the answer
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_same_bits_as_transformers_cache(tiny, room, temperature):
    model, tok = tiny
    params = GenerationParams(max_new_tokens=12, temperature=temperature, seed=0)
    ids_ref, logits_ref = _generate(model, tok, None, params)
    ids, logits = _generate(model, tok, room, params)
    assert torch.equal(ids, ids_ref)
    assert torch.equal(logits, logits_ref)  # bit for bit, not within a tolerance


def test_layers_write_in_place(tiny):
    model, tok = tiny
    cache = growing_cache(model, 16)
    backend = LocalBackend(model, tok, batch_size=2)
    enc = backend._left_padded(PROMPTS[:2])
    with torch.no_grad():
        model.generate(
            **enc, **generate_kwargs(GenerationParams(max_new_tokens=6), tok), **{cache_keyword(model): cache}
        )
    layer = cache.layers[0]
    width = enc["input_ids"].shape[1]
    assert layer.kbuf.shape[-2] == width + 16  # allocated once at prefill: no copy per token
    assert layer.keys.data_ptr() == layer.kbuf.data_ptr()  # the view attention reads is the buffer
    assert layer.get_seq_length() == width + 5  # the last sampled token is never fed back


def test_backend_answers_unchanged(tiny, monkeypatch):
    """LocalBackend.generate uses the growing cache; its answers equal those with transformers' cache."""
    model, tok = tiny
    params = GenerationParams(max_new_tokens=10)
    backend = LocalBackend(model, tok, batch_size=3)
    new = backend.generate(PROMPTS, params)
    monkeypatch.setattr("fspo.llm.local.growing_cache", lambda model, room: None)
    assert backend.generate(PROMPTS, params) == new


def test_other_attention_layers_keep_transformers_cache():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        num_hidden_layers=2, sliding_window=16, hidden_size=32, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
    )  # fmt: skip
    assert growing_cache(MistralForCausalLM(config), 8) is None
