import pytest
import torch

from nimllm.config import ModelConfig
from nimllm.generate import KVCache, generate, sample_next
from nimllm.model import GPT


def small_model(seed=0, block_size=24) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=40, n_layer=2, n_embd=32, n_head=4, block_size=block_size)).eval()
    # larger weights than the init so the distribution is peaked and greedy choices are not ties
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0)
    return model


@torch.no_grad()
def test_cached_forward_matches_full_forward_in_chunks():
    model = small_model()
    idx = torch.randint(0, 40, (3, 20))
    full = model(idx)
    cache = KVCache(model, batch_size=3)
    pieces = [model(idx[:, a:b], cache=cache) for a, b in [(0, 7), (7, 8), (8, 15), (15, 20)]]
    assert cache.pos == 20
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("max_new", [10, 60])  # 60 runs past the context of 24 several times
def test_generation_with_cache_equals_without(max_new):
    model = small_model(block_size=24)
    prompt = torch.randint(0, 40, (9,)).tolist()
    with_cache = list(generate(model, prompt, max_new, temperature=0, use_cache=True))
    without = list(generate(model, prompt, max_new, temperature=0, use_cache=False))
    assert len(with_cache) == max_new
    assert with_cache == without


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = small_model()
    prompt = [1, 2, 3]
    a = list(generate(model, prompt, 30, temperature=1.0, seed=7))
    b = list(generate(model, prompt, 30, temperature=1.0, seed=7))
    c = list(generate(model, prompt, 30, temperature=1.0, seed=8))
    assert a == b and a != c


def test_stop_ids_end_generation():
    model = small_model()
    prompt = [5, 6]
    free = list(generate(model, prompt, 20, temperature=0))
    stop = free[4]
    stopped = list(generate(model, prompt, 20, temperature=0, stop_ids=[stop]))
    assert stopped == free[:free.index(stop)]


def test_top_k_and_top_p_restrict_choices():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[5.0, 4.0, 3.0, -10.0, -10.0]])
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert picks == {0, 1}
    # p(0) ~ 0.67, p(1) ~ 0.24: top_p 0.5 keeps only token 0, 0.8 keeps 0 and 1
    assert {int(sample_next(logits, 1.0, top_p=0.5, generator=g)) for _ in range(100)} == {0}
    assert {int(sample_next(logits, 1.0, top_p=0.8, generator=g)) for _ in range(300)} == {0, 1}
    assert int(sample_next(logits, 0.0)) == 0
