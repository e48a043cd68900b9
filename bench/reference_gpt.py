"""Plain eager GPTs for the training-speed benchmark (bench/train_speed.py).

`ReferenceGPT(cfg)` is NimLLM's architecture (RMSNorm, rotary positions in the split-halves layout,
causal attention, 4x GELU MLP, no biases, tied embeddings) written the obvious way, as nanoGPT
writes a GPT: separate q, k and v projections, a hand-written RMSNorm, rotary applied with explicit
cos and sin, float32 logits. Given NimLLM's weights it computes NimLLM's function
(tests/test_bench_reference.py), so a speed ratio between the two is about the code, not the model.

`ReferenceGPT(cfg, norm="layer", positions="learned")` is nanoGPT's own shape (LayerNorm, learned
absolute positions) for scale, also without biases so that only the architecture differs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nimllm.config import ModelConfig, TrainConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x, cos, sin):
    """Turn each pair (i, i + D/2) of x (B, H, T, D) by its position's angle; cos, sin are (T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)  # bf16 in, bf16 out


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.k = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.v = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, rope):
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
                   for lin in (self.q, self.k, self.v))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, norm):
        super().__init__()
        self.attn_norm = norm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.mlp_norm = norm(cfg.n_embd)
        self.up = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.down = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, rope):
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.down(F.gelu(self.up(self.mlp_norm(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, cfg: ModelConfig, norm: str = "rms", positions: str = "rope"):
        super().__init__()
        assert cfg.activation == "gelu", "the reference has the GELU MLP only"
        self.cfg = cfg
        make_norm = {"rms": lambda dim: RMSNorm(dim, cfg.norm_eps),
                     "layer": lambda dim: nn.LayerNorm(dim, eps=cfg.norm_eps, bias=False)}[norm]
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, make_norm) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg.n_embd)
        if positions == "rope":
            inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
            angles = torch.outer(torch.arange(cfg.block_size).float(), inv_freq)  # (T, D/2)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        for p in self.parameters():  # GPT-2's initialisation; norm gains start at one
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            else:
                nn.init.ones_(p)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        else:
            rope = self.rope_cos[:T], self.rope_sin[:T]
        for block in self.blocks:
            x = block(x, rope)
        logits = F.linear(self.norm(x), self.wte.weight).float()  # tied output layer
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def reference_optimizer(model: nn.Module, tcfg: TrainConfig) -> torch.optim.AdamW:
    """The textbook AdamW (foreach, not fused), weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), foreach=True)
