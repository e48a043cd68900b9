"""Generation on token ids: a preallocated KV cache and sampling. Knows nothing of text.

When a sequence outgrows the model's context, the window jumps forward to keep the last half of
the context and is prefilled again; the cached and uncached paths follow the same rule, so they
produce the same tokens.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from nimllm.model import GPT


class KVCache:
    """Keys and values of every layer for up to `max_len` positions, written in place."""

    def __init__(self, model: GPT, batch_size: int, max_len: int | None = None, dtype=None):
        cfg = model.cfg
        p = next(model.parameters())
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len or cfg.block_size, cfg.head_dim)  # (L, B, H, T, D)
        self.k = torch.zeros(shape, dtype=dtype or p.dtype, device=p.device)
        self.v = torch.zeros_like(self.k)
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token for each row of logits (B, V); temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) > top_p   # keep tokens until p is reached
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: GPT, prompt: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_ids: Sequence[int] = (), use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one by one after `prompt` until max_new_tokens or a stop id (not yielded)."""
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    device = next(model.parameters()).device
    block = model.cfg.block_size
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()   # a fresh generator starts from one fixed seed: without this, every reply would repeat
    ids = list(prompt)
    cache = KVCache(model, batch_size=1) if use_cache else None
    start, cached = 0, 0  # window start in ids; how many tokens of the window the cache holds
    for _ in range(max_new_tokens):
        if len(ids) - start > block:
            start, cached = len(ids) - block // 2, 0
        if cache is None:
            logits = model(torch.tensor([ids[start:]], device=device))
        else:
            if cached == 0:
                cache.reset()
            logits = model(torch.tensor([ids[start + cached:]], device=device), cache=cache)
            cached = len(ids) - start
        token = int(sample_next(logits[:, -1], temperature, top_k, top_p, generator))
        if token in stop_ids:
            return
        ids.append(token)
        yield token
