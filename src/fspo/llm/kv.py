"""A KV cache written in place, for decoding on a CPU.

transformers' ``DynamicLayer`` concatenates every new token's keys and values onto the cache, which
copies the whole cache at every decode step; on a CPU that copy was a third of a decode step (a
batch of 8 prompts of ~440 tokens, SmolLM2, one thread). :class:`GrowingLayer` keeps preallocated
buffers ``[rows, kv heads, capacity, dim]``, writes each step's tokens into them, and hands
attention a view of the filled part: the same values in the same shape, so the logits are the same
bits (tests/llm/test_kv.py). Used by local generation (:mod:`fspo.llm.local`) and by the serving
engine's continuous batching (:mod:`fspo.serve.batching`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch


@functools.cache
def _layer_class():
    """Made on first use, so importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """One layer's keys and values in buffers with ``room`` free token slots after the first write
        (prefill); full buffers double. ``keys``/``values`` are views of the filled part."""

        def __init__(
            self, kbuf: torch.Tensor | None = None, vbuf: torch.Tensor | None = None, length: int = 0, room: int = 64
        ) -> None:
            super().__init__()
            self.kbuf, self.vbuf, self.length, self.room = kbuf, vbuf, length, max(1, room)
            if kbuf is not None:
                self.is_initialized = True
                self.device = kbuf.device
                self._view()

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.device = key_states.device
            self.kbuf = _with_tokens(key_states, key_states.shape[-2] + self.room)
            self.vbuf = _with_tokens(value_states, value_states.shape[-2] + self.room)
            self.length = 0
            self.is_initialized = True

        def _view(self) -> None:
            self.keys, self.values = self.kbuf[:, :, : self.length], self.vbuf[:, :, : self.length]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            t = key_states.shape[-2]
            if self.length + t > self.kbuf.shape[-2]:  # full: double the capacity
                grow = max(t, self.kbuf.shape[-2])
                self.kbuf = torch.cat([self.kbuf, _with_tokens(self.kbuf, grow)], dim=-2)
                self.vbuf = torch.cat([self.vbuf, _with_tokens(self.vbuf, grow)], dim=-2)
            self.kbuf[:, :, self.length : self.length + t] = key_states
            self.vbuf[:, :, self.length : self.length + t] = value_states
            self.length += t
            self._view()
            return self.keys, self.values

        def select(self, index: torch.Tensor | None, cut: int) -> None:
            """Keep the rows ``index`` (all if None) and drop the first ``cut`` token columns."""
            if index is not None:
                self.kbuf, self.vbuf = self.kbuf[index], self.vbuf[index]
            if cut:
                self.kbuf, self.vbuf = self.kbuf[:, :, cut:], self.vbuf[:, :, cut:]
                self.length -= cut
            self._view()

        def _adopt(self) -> None:
            """After a parent method replaced ``keys``/``values``: they become the buffers."""
            if self.keys is not None and self.keys.numel():
                self.kbuf, self.vbuf, self.length = self.keys, self.values, self.keys.shape[-2]

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            self._adopt()

        def batch_repeat_interleave(self, repeats: int) -> None:
            super().batch_repeat_interleave(repeats)
            self._adopt()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            super().batch_select_indices(indices)
            self._adopt()

        def reset(self) -> None:
            self.kbuf = self.vbuf = None
            self.length = 0
            super().reset()

    return GrowingLayer


def growing_layer(kbuf: torch.Tensor | None = None, vbuf: torch.Tensor | None = None, length: int = 0, room: int = 64):
    """A :class:`GrowingLayer` over the given buffers (the first ``length`` tokens filled), or an
    empty one that allocates ``room`` free slots past its first write."""
    return _layer_class()(kbuf, vbuf, length, room)


def growing_cache(model, room: int):
    """A cache for ``model.generate`` whose layers grow in place with ``room`` slots (the new
    tokens to come), or None where the model has layers other than plain full attention (sliding
    windows, linear attention): those keep transformers' own cache."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [growing_layer(room=room) for _ in cache.layers]
    return cache


def cache_keyword(model) -> str:
    """The name ``model``'s forward and generate take a cache under: transformers renamed
    ``past_key_values`` to ``cache``; both spellings are supported."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _with_tokens(like: torch.Tensor, tokens: int) -> torch.Tensor:
    """Zeros shaped like ``like`` with ``tokens`` token slots."""
    shape = list(like.shape)
    shape[-2] = tokens
    return like.new_zeros(shape)


@contextlib.contextmanager
def gqa_attention(on: bool) -> Iterator[None]:
    """Let transformers' SDPA attention use grouped-query attention with a padding mask (it repeats
    the keys and values per query head otherwise: a copy of the whole batch's KV at every step).
    Scoped to the call. Equal within float rounding, not bit for bit (greedy answers of the eval's
    demo batches changed in the last bits of their logits), so only serving uses it, not the eval,
    whose answers must not depend on the code path."""
    name = "TRANSFORMERS_SDPA_FORCE_GQA"
    if not on or name in os.environ:
        yield
        return
    os.environ[name] = "1"
    try:
        yield
    finally:
        os.environ.pop(name, None)
