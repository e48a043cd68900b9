"""The GPT: token ids in, next-token logits (or the loss) out. Nothing else lives here.

Pre-norm decoder with RMSNorm, rotary position embeddings, causal attention through
`scaled_dot_product_attention`, a 4x MLP (GELU or squared ReLU), no biases and the output layer
tied to the token embedding. Shapes and the rotary layout follow the Llama family of
`transformers` (rotate-half, q/k/v then o, up then down), which is what makes a NimLLM model
loadable as `ArceeForCausalLM` without touching a weight.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nimllm.config import ModelConfig


def rotary_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position, (block_size, head_dim), in the split-in-halves layout."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)  # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)                                        # (T, D)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of x (B, H, T, D) by their position's angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dropout, self.qk_norm = cfg.n_head, cfg.head_dim, cfg.dropout, cfg.qk_norm
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, cache=None, layer=0):
        """x (B, T, C); cos, sin broadcast against (B, H, T, D). Without a cache x is whole sequences
        (causal attention); a cache stores this layer's new keys and values and attends over its own."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            y = cache.attend(layer, q, k, v)                                   # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.down = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)
        self.activation = cfg.activation

    def forward(self, x):
        h = self.up(x)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h).square()
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = cfg.dropout   # applied as a function: a module call would cost every decode step its overhead

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + F.dropout(self.attn(self.attn_norm(x), cos, sin, cache, layer), self.dropout, self.training)
        return x + F.dropout(self.mlp(self.mlp_norm(x)), self.dropout, self.training)


def at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """bf16 logits in fp32 for the loss (its log-sum-exp needs the precision); fp32 and fp64 as they are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def chunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          rows: int = 2048) -> torch.Tensor:
    """The mean cross-entropy of the logits x @ weight.T (x (N, C), targets (N,), -1 not scored), computed
    `rows` positions at a time and recomputed in backward: the (N, V) logits never exist at once, which
    at a vocabulary of 8192 is more memory than a block's activations."""
    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(at_least_fp32(F.linear(h, weight)), t, ignore_index=-1, reduction="sum")
    total = sum(checkpoint(chunk_loss, h, t, use_reentrant=False) for h, t in zip(x.split(rows), targets.split(rows)))
    return total / (targets >= 0).sum()


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        cos, sin = rotary_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.activation_checkpointing = False  # a training choice: recompute blocks in backward
        # None: the token embedding is the output layer (tied). A copy of the model with its weights in
        # another format (generate.with_weights) puts that format's linear layer of the embedding here
        self.output_layer: nn.Module | None = None
        self.reset_parameters()

    def reset_parameters(self):
        """GPT-2 initialisation; residual outputs shrunk so the residual stream's variance stays put."""
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                residual = name.endswith(("proj.weight", "down.weight"))
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if residual else 0.02
                nn.init.normal_(p, mean=0.0, std=0.0 if residual and self.cfg.zero_init else std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache=None,
                last_only: bool = False, where: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids. Returns logits (B, T, V), or (B, 1, V) of the last position alone (all
        that decoding reads), or (N, V) of the N positions a (B, T) mask `where` picks (the answers an
        update scores), or with targets (B, T) the mean cross-entropy over positions whose target
        is not -1. With a cache (nimllm/generate.py), idx continues the sequences the cache holds: the
        cache gives idx's positions (`rotary`) and keeps every layer's keys and values (`attend`)."""
        B, T = idx.shape
        if cache is None:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]                             # (T, D)
        else:
            cos, sin = cache.rotary(self.rope_cos, self.rope_sin, T)                    # broadcast to (B, H, T, D)
        if cos.shape[-2] < T:   # the tables end at the context, so positions past it come back short
            raise ValueError(f"sequence is longer than the context of {self.cfg.block_size} tokens")
        x = self.wte(idx)                                                               # (B, T, C)
        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, i)
        if last_only:
            x = x[:, -1:]                                                               # (B, 1, C)
        elif where is not None:
            x = x[where]                                                                # (N, C)
        x = self.norm(x)
        if targets is not None and self.activation_checkpointing and self.training and self.output_layer is None:
            return chunked_cross_entropy(x.flatten(0, 1), self.wte.weight, targets.flatten())
        logits = F.linear(x, self.wte.weight) if self.output_layer is None else self.output_layer(x)  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
