"""FP8 matmuls for training (`--fp8`), on GPUs that have them (compute capability 8.9 and up: Ada,
Hopper): the blocks' linear layers multiply in float8 with one scale per tensor, computed from the
tensor's largest magnitude at every call; the embedding, the output layer, attention and the norms stay
as they are. Forward in e4m3 (more precision), the gradients in e5m2 (more range), as in the FP8
training recipes of NVIDIA's Transformer Engine and torchao. The weights and optimizer stay in fp32, so
a checkpoint is the same as without it; only training steps use FP8 (validation and every later use
of the model run the plain matmul)."""
from __future__ import annotations

import torch
import torch.nn as nn

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def fp8_available(device: torch.device | str) -> bool:
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def to_float8(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """t scaled so that its largest magnitude is the format's largest, in that format; and the scale
    that undoes it."""
    amax = t.detach().abs().max().float().clamp(min=1e-12)
    scale = torch.finfo(dtype).max / amax
    return (t.float() * scale).clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype), scale.reciprocal()


def float8_mm(a: torch.Tensor, b: torch.Tensor, a_dtype: torch.dtype, b_dtype: torch.dtype,
              out_dtype: torch.dtype) -> torch.Tensor:
    """a (M, K) @ b (K, N), each cast to its float8 format with its own scale."""
    a8, a_scale = to_float8(a.contiguous(), a_dtype)   # and a row-major
    b8, b_scale = to_float8(b.t().contiguous(), b_dtype)   # the kernel takes b column-major
    return torch._scaled_mm(a8, b8.t(), scale_a=a_scale, scale_b=b_scale, out_dtype=out_dtype)


class Float8Matmul(torch.autograd.Function):
    """x @ weight.T with both in e4m3, and its gradients with the incoming gradient in e5m2."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return float8_mm(x, weight.t(), E4M3, E4M3, out_dtype)                   # (N, out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = float8_mm(grad, weight, E5M2, E4M3, x.dtype)                    # (N, out) @ (out, in)
        grad_weight = float8_mm(grad.t(), x, E5M2, E4M3, weight.dtype)           # (out, N) @ (N, in)
        return grad_x, grad_weight, None


class Float8Linear(nn.Linear):
    """nn.Linear (no bias) whose training steps multiply in FP8; the same parameters, the same state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        flat = x.reshape(-1, x.size(-1)).to(out_dtype)                          # (B*T, in)
        return Float8Matmul.apply(flat, self.weight, out_dtype).view(*x.shape[:-1], self.out_features)


def use_fp8(blocks: nn.Module, device: torch.device, log) -> bool:
    """The blocks' linear layers made Float8Linear where the device has FP8 matmuls; elsewhere a one-line
    note, and training goes on as it would without --fp8. Whether FP8 is used."""
    if not fp8_available(device):
        log(f"--fp8: {device} has no FP8 matmuls (a GPU of compute capability 8.9 or more has them); "
            f"training without")
        return False
    to_float8_linears(blocks)
    return True


def to_float8_linears(blocks: nn.Module) -> None:
    """Every nn.Linear in blocks made a Float8Linear, in place: the same parameters, the same state dict."""
    for module in blocks.modules():
        if type(module) is nn.Linear:
            module.__class__ = Float8Linear
