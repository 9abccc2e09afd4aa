"""In-process generation with transformers: batched, left-padded, seeded."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from fspo.data.truncation import encode_prompt
from fspo.llm.base import GenerationParams, Prompt, apply_stops
from fspo.llm.kv import cache_keyword, growing_cache


def generate_kwargs(params: GenerationParams, tokenizer) -> dict:
    """``model.generate`` arguments for ``params``: greedy unless temperature > 0 (then top-p sampling)."""
    sample = params.temperature > 0
    kwargs = dict(
        max_new_tokens=params.max_new_tokens,
        do_sample=sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if sample:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    else:  # silence generation-config defaults that only apply to sampling
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


class LocalBackend:
    """Generate with a loaded causal LM. Chat prompts use the tokenizer's chat template."""

    def __init__(self, model, tokenizer, name: str = "local", batch_size: int = 8, progress: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.progress = progress

    @classmethod
    def from_spec(cls, spec: str, device: str = "auto", dtype: str = "float32", **kwargs) -> LocalBackend:
        from fspo.models.registry import load_model

        model, tok = load_model(spec, dtype=dtype, device=device)
        return cls(model, tok, name=kwargs.pop("name", spec), **kwargs)

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _left_padded(self, texts: Sequence[str]) -> dict:
        """A left-padded batch, each prompt encoded by the one policy training and serving use."""
        ids = [list(encode_prompt(self.tokenizer, t)) for t in texts]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        return {"input_ids": input_ids.to(self.model.device), "attention_mask": mask.to(self.model.device)}

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[str]:
        texts = [self.render(p) for p in prompts]
        out: list[str] = []
        tok = self.tokenizer
        self.model.eval()
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc=f"generate ({self.name})", disable=not self.progress, leave=False):
            enc = self._left_padded(texts[start : start + self.batch_size])
            gen_kwargs = generate_kwargs(params, tok)
            # Seed per batch position so a batch's output does not depend on what ran before it.
            # KV written in place (same logits, no copy of the cache per token; fspo.llm.kv)
            cache = growing_cache(self.model, params.max_new_tokens)
            if cache is not None:
                gen_kwargs[cache_keyword(self.model)] = cache
            with torch.random.fork_rng():
                torch.manual_seed(params.seed * 1_000_003 + start)
                ids = self.model.generate(**enc, **gen_kwargs)
            new = ids[:, enc["input_ids"].shape[1] :]
            for row in new:
                out.append(apply_stops(tok.decode(row, skip_special_tokens=True), params.stop))
        return out

    @torch.no_grad()
    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str], prefix: str = "") -> list[list[float]]:
        """Log-prob of the first token of each choice right after prompt + ``prefix`` (for log-prob verdicts).

        ``prefix`` is text the answer starts with (e.g. ``"Verdict:"``), appended after the chat template.
        """
        tok = self.tokenizer
        ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in choices]
        texts = [self.render(p) + prefix for p in prompts]
        out: list[list[float]] = []
        self.model.eval()
        for start in range(0, len(texts), self.batch_size):
            enc = self._left_padded(texts[start : start + self.batch_size])
            logp = torch.log_softmax(self.model(**enc).logits[:, -1, :].float(), dim=-1)
            out.extend([[float(row[i]) for i in ids] for row in logp])
        return out
