"""One selective update: the mask, EWC (its gradient checked by finite differences), the Fisher, and the
stop once the lessons are learned."""
import copy

import pytest
import torch
import torch.nn.functional as F

from nimllm.config import MemoryConfig, ModelConfig
from nimllm.update import (AnswerBatches, apply_delta, apply_top_k_mask, ewc_penalty, fisher_diagonal,
                           selective_update)
from nimllm.model import GPT

CFG = ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=16)


def test_top_k_mask_keeps_exactly_the_largest_fraction():
    torch.manual_seed(0)
    grads = {"a": torch.randn(100, 30), "b": torch.randn(1000), "c": torch.randn(7)}
    total = sum(g.numel() for g in grads.values())
    for fraction in (0.001, 0.01, 0.2):
        masks = apply_top_k_mask(grads, fraction)
        chosen = sum(len(i) for i in masks.values())
        assert chosen == round(fraction * total)
        picked = torch.cat([grads[n].flatten()[i].abs() for n, i in masks.items()])
        left = torch.cat([g.flatten().abs() for g in grads.values()])
        assert picked.min() >= left.sort(descending=True).values[chosen]


def test_ewc_penalty_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=8, n_layer=1, n_embd=4, n_head=1, block_size=4)).double()
    anchor = {n: p.detach() + 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    params = [p for p in model.parameters()]
    assert torch.autograd.gradcheck(lambda *_: ewc_penalty(model, anchor, fisher, 3.0), params)
    # and its closed form: lambda * F * (w - anchor)
    model.zero_grad()
    ewc_penalty(model, anchor, fisher, 3.0).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, 3.0 * fisher[n] * (p.detach() - anchor[n]))


def test_fisher_is_positive_and_normalised():
    torch.manual_seed(0)
    model = GPT(CFG)
    fisher = fisher_diagonal(model, [torch.randint(0, 64, (17,)) for _ in range(4)])
    values = torch.cat([f.flatten() for f in fisher.values()])
    assert (values >= 0).all() and values.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_selective_update_moves_only_the_mask_and_lowers_the_loss():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    before = copy.deepcopy(model.state_dict())
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    delta, report = selective_update(model, x, y, anchor, fisher, MemoryConfig(mask_fraction=0.02, steps=10, lr=1e-2))
    total = sum(p.numel() for p in model.parameters())
    assert report.n_weights == round(0.02 * total)
    changed = sum((model.state_dict()[n] != before[n]).sum().item() for n in before)
    assert 0 < changed <= report.n_weights
    assert report.loss_after < report.loss_before
    # the live weights are exactly base + delta, added the way a reload adds it
    rebuilt = GPT(CFG)
    rebuilt.load_state_dict(before)
    apply_delta(rebuilt, delta)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))


def model_and_lessons():
    """A small random model, its own weights as anchor, a flat Fisher, and two lessons whose answers are
    the last 6 tokens (the rest is context)."""
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    x = torch.randint(0, 64, (2, 16))
    y = torch.full((2, 16), -1)
    y[:, 10:] = torch.randint(0, 64, (2, 6))
    return model, anchor, fisher, x, y


@pytest.mark.slow
def test_an_update_stops_once_its_lessons_are_learned():
    model, anchor, fisher, x, y = model_and_lessons()
    mcfg = MemoryConfig(mask_fraction=0.05, steps=200, lr=1e-2, learned_loss=0.3)
    delta, report = selective_update(model, x, y, anchor, fisher, mcfg)
    assert report.learned and 0 < report.steps < 200
    with torch.no_grad():
        (loss,), (right,) = AnswerBatches.of([(x, y)]).scored(model)
    assert right.all() and loss.item() <= 0.3
    # learned once more, it takes no step and changes nothing
    again, report = selective_update(model, x, y, anchor, fisher, mcfg)
    assert report.steps == 0 and report.learned and again == {} and report.n_weights == 0


def test_answers_are_right_only_where_every_answer_token_is_first():
    model = GPT(CFG).eval()
    x = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        best = model(x).argmax(-1)
    y = torch.full((1, 16), -1)
    y[0, 8:] = best[0, 8:]
    answers = AnswerBatches.of([(x, y)])
    with torch.no_grad():
        assert answers.scored(model)[1][0].all()
        y[0, 12] = (best[0, 12] + 1) % 64
        assert not AnswerBatches.of([(x, y)]).scored(model)[1][0].all()


@pytest.mark.slow
def test_an_update_is_learned_only_once_the_kept_answers_are_right_again():
    model, anchor, fisher, x, y = model_and_lessons()
    kx = torch.randint(0, 64, (8, 16))                              # answers the model gives now, to keep
    with torch.no_grad():
        ky = model(kx).argmax(-1)
    ky[:, :8] = -1
    mcfg = MemoryConfig(mask_fraction=0.05, steps=300, lr=1e-2, learned_loss=0.3)
    free = copy.deepcopy(model)
    _, alone = selective_update(free, x, y, anchor, fisher, mcfg)
    with torch.no_grad():
        broken = ((free(kx).argmax(-1) != ky) & (ky >= 0)).sum().item()
    _, report = selective_update(model, x, y, anchor, fisher, mcfg, keep=[(kx, ky)])
    with torch.no_grad():
        still = ((model(kx).argmax(-1) == ky) | (ky < 0)).all().item()
    assert broken > 0                     # learning the lessons alone moves some kept answer ...
    assert report.learned and still       # ... with them kept, it is learned only once they are back
    assert report.steps >= alone.steps


def plain_answer_scores(model: GPT, batches: list) -> tuple[list, list]:
    """Each batch as it is, padded and whole: the mean loss on its answers and which are ranked first."""
    losses, right = [], []
    for x, y in batches:
        logits = model(x)                                                               # (B, T, V)
        losses.append(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1))
        right.append((logits.argmax(-1) == y)[y >= 0])
    return losses, right


def test_answer_batches_score_and_differentiate_as_each_batch_alone():
    torch.manual_seed(0)
    model = GPT(CFG).double().eval()
    batches = []
    for b, t in ((2, 5), (3, 16), (4, 9)):   # answers at random places, some rows with none, padding after
        x, y = torch.randint(0, 64, (b, t)), torch.randint(0, 64, (b, t))
        y[torch.rand(b, t) < 0.5] = -1
        y[0, :] = -1
        y[1, :2], y[1, -1] = 1, -1
        batches.append((x, y))
    answers = AnswerBatches.of(batches)
    assert len(answers.batches) > 1 and sum(x.numel() for x, _ in answers.batches) < sum(x.numel() for x, _ in batches)

    def scores_and_gradients(score):
        model.zero_grad()
        losses, right = score()
        sum(losses).backward()
        return losses, right, [p.grad.clone() for p in model.parameters()]
    losses, right, grads = scores_and_gradients(lambda: answers.scored(model))
    plain_losses, plain_right, plain_grads = scores_and_gradients(lambda: plain_answer_scores(model, batches))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(losses, plain_losses))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(grads, plain_grads))
    # the same answer tokens ranked first, in the regrouped order (rows sorted by length)
    assert [r.sort().values.tolist() for r in right] == [r.sort().values.tolist() for r in plain_right]
