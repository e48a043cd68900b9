"""FP8 matmuls: the float8 matmul and its gradients against float64 (torch._scaled_mm runs on a CPU too,
slowly), the swap that keeps a model's parameters, and the one-line note where a device has none."""
import pytest
import torch
import torch.nn as nn

from nimllm.config import ModelConfig
from nimllm.fp8 import E4M3, Float8Matmul, to_float8, to_float8_linears, use_fp8
from nimllm.model import GPT
from conftest import run_cli


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def test_to_float8_round_trips_within_the_format_precision():
    t = torch.randn(64, 48) * 37.0
    t8, undo = to_float8(t, E4M3)
    assert t8.dtype == E4M3 and t8.float().abs().max() <= torch.finfo(E4M3).max
    assert relative_error(t8.float() * undo, t.double()) < 0.04   # e4m3 keeps 3 bits of mantissa


def test_float8_matmul_and_its_gradients_match_float64():
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(48, 32, requires_grad=True)
    out = Float8Matmul.apply(x, w, torch.float32)
    grad = torch.randn(64, 48)
    out.backward(grad)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    want = x64 @ w64.t()
    want.backward(grad.double())
    assert relative_error(out, want) < 0.06
    assert relative_error(x.grad, x64.grad) < 0.15   # the incoming gradient in e5m2: 2 bits of mantissa
    assert relative_error(w.grad, w64.grad) < 0.15


def test_the_swap_keeps_parameters_and_only_training_uses_fp8():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=16))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    x = torch.randint(0, 64, (2, 16))
    model.eval()
    plain = model(x)
    assert use_fp8(model.blocks, torch.device("cpu"), print) is False        # a CPU has no FP8 matmuls
    to_float8_linears(model.blocks)                                           # what it does where they exist
    assert all(type(m) is not nn.Linear for m in model.blocks.modules())
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    assert torch.equal(model(x), plain)                                       # evaluation: the plain matmul
    model.train()
    fp8 = model(x)
    assert not torch.equal(fp8, plain) and relative_error(fp8, plain.double()) < 0.1
    model(x, x).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow   # a training process
def test_fp8_where_the_device_has_none_trains_on_with_a_one_line_note(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 2000)
    out = run_cli("train", str(corpus), "--model", str(tmp_path / "m"), "--preset", "tiny", "--vocab-size", "300",
                  "--steps", "3", "--no-chat-skills", "--fp8")
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stdout.splitlines() if line.startswith("--fp8:")]
    assert len(notes) == 1 and "no FP8 matmuls" in notes[0]
    assert (tmp_path / "m" / "model.safetensors").exists()
