import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nimllm.config import PRESETS, ModelConfig
from nimllm.model import GPT, apply_rotary, rotary_tables


def tiny_config(**changes) -> ModelConfig:
    base = dict(vocab_size=16, n_layer=1, n_embd=8, n_head=2, block_size=6)
    return ModelConfig(**{**base, **changes})


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{"activation": "gelu"}, {"activation": "relu2"}, {"qk_norm": True}])
def test_gradients_match_finite_differences_float64(changes):
    torch.manual_seed(0)
    model = GPT(tiny_config(**changes)).double()
    idx = torch.randint(0, 16, (2, 6))
    targets = torch.randint(0, 16, (2, 6))
    targets[0, 2] = -1  # ignored positions must not contribute
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    def loss_of(*ps):
        return functional_call(model, dict(zip(names, ps)), (idx, targets))

    assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradients_deeper_model_fast_mode():
    torch.manual_seed(1)
    model = GPT(tiny_config(n_layer=3, n_embd=16, n_head=4, vocab_size=32, block_size=10)).double()
    idx, targets = torch.randint(0, 32, (2, 10)), torch.randint(0, 32, (2, 10))
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert torch.autograd.gradcheck(lambda *ps: functional_call(model, dict(zip(names, ps)), (idx, targets)),
                                    params, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_rotary_scores_depend_only_on_relative_position():
    cfg = tiny_config(n_embd=32, n_head=2, block_size=32)
    cos, sin = rotary_tables(cfg)
    q, k = torch.randn(cfg.head_dim), torch.randn(cfg.head_dim)

    def score(i, j):
        qi = apply_rotary(q.view(1, 1, 1, -1), cos[i:i + 1], sin[i:i + 1])
        kj = apply_rotary(k.view(1, 1, 1, -1), cos[j:j + 1], sin[j:j + 1])
        return (qi * kj).sum().item()

    assert score(5, 3) == pytest.approx(score(20, 18), abs=1e-4)
    assert score(0, 0) == pytest.approx((q * k).sum().item(), abs=1e-5)
    assert score(5, 3) != pytest.approx(score(5, 4), abs=1e-3)


def test_rotary_uses_split_halves_layout():
    """Dimension i pairs with i + D/2 (the Llama `rotate_half` layout), not with i + 1."""
    cfg = tiny_config(n_embd=8, n_head=1, block_size=4)
    cos, sin = rotary_tables(cfg)
    x = torch.zeros(1, 1, 1, 8)
    x[..., 0] = 1.0
    y = apply_rotary(x, cos[1:2], sin[1:2])
    assert y[..., 4].item() == pytest.approx(math.sin(1.0), abs=1e-6)   # rotated into dimension 0 + D/2
    assert y[..., 1].item() == 0.0


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layer=2, n_embd=16, block_size=12)).eval()
    a = torch.randint(0, 16, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 16
    assert torch.allclose(model(a)[0, :8], model(b)[0, :8], atol=1e-6)
    assert not torch.allclose(model(a)[0, 8:], model(b)[0, 8:], atol=1e-6)


def test_zero_init_starts_the_residual_projections_at_zero_and_nothing_else():
    model = GPT(tiny_config(n_layer=2, zero_init=True))
    zero = {n for n, p in model.named_parameters() if not p.any()}
    assert zero == {f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.proj", "mlp.down")}
    assert not any(not p.any() for p in GPT(tiny_config(n_layer=2)).parameters())


def test_tied_embeddings_and_no_biases():
    model = GPT(PRESETS["tiny"].model)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("bias") for n in names)
    assert not any("lm_head" in n for n in names)  # the output layer is the embedding matrix


def test_103m_preset_shape():
    with torch.device("meta"):
        model = GPT(PRESETS["103m"].model)
    cfg = model.cfg
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size, cfg.head_dim) == (8, 1024, 16, 512, 64)
    # 8 blocks of 12 * 1024^2 weights, 8192 x 1024 tied embedding, RMSNorm gains
    assert model.num_params() == 8 * (12 * 1024 ** 2 + 2 * 1024) + 8192 * 1024 + 1024


@pytest.mark.slow
def test_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=4, block_size=32))
    x = torch.randint(0, 64, (4, 32))
    y = torch.randint(0, 64, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = model(x, y)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5 and loss.item() < 0.05


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layer=2, n_embd=16)).train()
    idx, targets = torch.randint(0, 16, (2, 6)), torch.randint(0, 16, (2, 6))
    model(idx, targets).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing = True
    model(idx, targets).backward()
    for g, p in zip(plain, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_chunked_cross_entropy_matches_the_whole_logits_in_float64():
    from nimllm.model import chunked_cross_entropy
    torch.manual_seed(0)
    x = torch.randn(23, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 16, (23,))
    targets[[0, 7, 8, 22]] = -1
    chunked = chunked_cross_entropy(x, weight, targets, rows=5)   # 5 chunks, the last of 3 rows
    grads = torch.autograd.grad(chunked, (x, weight))
    plain = F.cross_entropy(x @ weight.t(), targets, ignore_index=-1)
    plain_grads = torch.autograd.grad(plain, (x, weight))
    assert torch.allclose(chunked, plain, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(grads, plain_grads))


def test_too_long_sequence_is_refused():
    model = GPT(tiny_config())
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 7, dtype=torch.long))


def test_training_loss_is_the_stored_reference():
    """The loss and logits of a fixed float64 model, as computed before the forward pass served
    decoding too (the cache and the decoder's own walk through the layers became one forward)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=16)).double()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randint(0, 64, (3, 16), generator=g), torch.randint(0, 64, (3, 16), generator=g)
    y[1, :5] = -1
    logits = model(x)
    assert model(x, y).item() == pytest.approx(4.147658611617292, abs=1e-12)
    assert logits.sum().item() == pytest.approx(29.25375445966741, abs=1e-10)
    assert logits.square().sum().item() == pytest.approx(53.41798155106284, abs=1e-10)
    assert torch.allclose(model(x, last_only=True), logits[:, -1:], atol=1e-12)
    where = torch.rand(x.shape) < 0.3
    assert torch.allclose(model(x, where=where), logits[where], atol=1e-12)
