"""The optimizers: Muon beside AdamW, AdamW stepped inside backward, and AdamW with bfloat16 moments."""
import copy

import pytest
import torch

from nimllm import checkpoint
from nimllm.config import ModelConfig, ModelFolder, TrainConfig
from nimllm.model import GPT
from nimllm.optim import AdamWBf16Moments, OptimizerInBackward, build_optimizer, round_stochastically

CFG = ModelConfig(vocab_size=96, n_layer=2, n_embd=32, n_head=4, block_size=16)


def take_steps(model: GPT, optimizer, steps: range) -> None:
    for step in steps:
        idx = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.block_size),
                            generator=torch.Generator().manual_seed(step))
        model(idx, idx).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_muon_takes_the_blocks_matrices_and_resumes_from_the_training_state_exactly(tmp_path):
    """Muon moves the blocks' matrices, AdamW the embedding and the gains; the training state holds both
    optimizers' moments, so a run saved at step 3 and resumed in a new model ends where the whole run does."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, n_layer=2, n_embd=32, n_head=4, block_size=16)
    tcfg = TrainConfig(lr=1e-2, optimizer="muon")
    whole = GPT(cfg)
    split = copy.deepcopy(whole)
    optimizer = build_optimizer(whole, tcfg, "cpu")
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert [id(p) for g in muon.param_groups for p in g["params"]] == \
        [id(p) for p in whole.blocks.parameters() if p.dim() == 2]
    take_steps(whole, optimizer, range(6))

    take_steps(split, first := build_optimizer(split, tcfg, "cpu"), range(3))
    checkpoint.save_train_state(ModelFolder(tmp_path), split, first, {"step": 3})
    resumed = GPT(cfg)
    second = build_optimizer(resumed, tcfg, "cpu")
    assert checkpoint.load_train_state(ModelFolder(tmp_path), resumed, second) == {"step": 3}
    take_steps(resumed, second, range(3, 6))
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_optimizer_in_backward_makes_the_normal_update_and_frees_gradients():
    """With fp32 moments, stepping each block inside backward is AdamW's update, and no more than one
    block's gradients (or those outside the blocks) exist at any time."""
    torch.manual_seed(0)
    model = GPT(CFG)
    hooked = copy.deepcopy(model)
    hooked.activation_checkpointing = True  # recomputation in backward must still see the old weights
    optimizer = build_optimizer(model, TrainConfig(lr=1e-2), "cpu")
    in_backward = OptimizerInBackward(hooked, TrainConfig(lr=1e-2), moment_dtype=torch.float32)
    params = list(hooked.parameters())
    held = []   # how many parameters hold a gradient, after each arrives (and its block's step, if last)
    for p in params:
        p.register_post_accumulate_grad_hook(lambda _: held.append(sum(q.grad is not None for q in params)))
    for _ in range(3):
        idx = torch.randint(0, CFG.vocab_size, (2, CFG.block_size))
        model(idx, idx).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hooked(idx, idx).backward()
        assert all(p.grad is None for p in hooked.parameters())
    block_size = len(list(hooked.blocks[0].parameters()))
    assert len(in_backward.optimizers) == CFG.n_layer + 1
    outside = len(params) - CFG.n_layer * block_size
    assert max(held) <= block_size + outside < len(params) and held.count(0) == 3   # 0: at each backward's end
    for a, b in zip(model.parameters(), hooked.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_with_moments_in_the_parameters_dtype_is_torch_adamw_exactly(weight_decay):
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(64, 32, dtype=torch.float64))
    theirs = copy.deepcopy(ours)
    reference = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), weight_decay=weight_decay, foreach=False)
    optimizer = AdamWBf16Moments([ours], lr=1e-2, betas=(0.9, 0.95), weight_decay=weight_decay,
                                 moment_dtype=torch.float64)
    for _ in range(6):
        grad = torch.randn(64, 32, dtype=torch.float64)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        optimizer.step()
        reference.step()
    torch.testing.assert_close(ours, theirs, atol=1e-14, rtol=0)
    torch.testing.assert_close(optimizer.state[ours]["exp_avg_sq"], reference.state[theirs]["exp_avg_sq"],
                               atol=1e-14, rtol=0)


def test_stochastic_rounding_lands_on_a_neighbour_and_is_unbiased():
    torch.manual_seed(0)
    value = 1.0 + 1 / 512                  # a quarter of the way from bfloat16's 1.0 to its next, 1.0078125
    rounded = round_stochastically(torch.full((200_000,), value), torch.bfloat16)
    assert rounded.dtype == torch.bfloat16
    assert set(rounded.float().unique().tolist()) == {1.0, 1.0078125}
    assert abs(rounded.double().mean().item() - value) < 2e-5      # nearest rounding would give 1.0 exactly
    assert round_stochastically(torch.tensor([3.0, -0.5]), torch.bfloat16).tolist() == [3.0, -0.5]


def test_bfloat16_moments_follow_fp32_adamw_and_take_half_the_memory():
    """The same model trained 40 steps with bfloat16 moments ends within a small distance of fp32 AdamW's,
    far closer than to where it started."""
    torch.manual_seed(0)
    model = GPT(CFG)
    start = copy.deepcopy(model)
    half = copy.deepcopy(model)
    full_opt = OptimizerInBackward(model, TrainConfig(lr=3e-3), moment_dtype=torch.float32)  # noqa: F841
    half_opt = OptimizerInBackward(half, TrainConfig(lr=3e-3))
    for step in range(40):
        idx = torch.randint(0, CFG.vocab_size, (4, CFG.block_size), generator=torch.Generator().manual_seed(step))
        model(idx, idx).backward()
        half(idx, idx).backward()
    moments = [t for st in half_opt.state.values() for k, t in st.items() if k != "step"]
    assert {t.dtype for t in moments} == {torch.bfloat16}
    flat = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (model, half, start)]
    assert (flat[1] - flat[0]).norm() < 0.1 * (flat[0] - flat[2]).norm()


def test_bfloat16_moments_are_saved_and_resumed_in_bfloat16(tmp_path):
    torch.manual_seed(0)
    model = GPT(CFG)
    optimizer = OptimizerInBackward(model, TrainConfig())
    idx = torch.randint(0, CFG.vocab_size, (2, CFG.block_size))
    model(idx, idx).backward()
    checkpoint.save_train_state(ModelFolder(tmp_path), model, optimizer, {"step": 1})
    resumed = GPT(CFG)
    second = OptimizerInBackward(resumed, TrainConfig())
    checkpoint.load_train_state(ModelFolder(tmp_path), resumed, second)
    for p, q in zip(model.parameters(), resumed.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            saved, loaded = optimizer.state[p][key], second.state[q][key]
            assert loaded.dtype == torch.bfloat16 and torch.equal(saved, loaded), key
        assert second.state[q]["step"].item() == 1


def test_a_training_state_moves_between_adamw_and_low_memory_both_ways(tmp_path):
    """A run saved with AdamW resumes with --low-memory (its moments made bfloat16) and back (fp32 again)."""
    torch.manual_seed(0)
    idx = torch.randint(0, CFG.vocab_size, (2, CFG.block_size))
    model = GPT(CFG)
    adamw = build_optimizer(model, TrainConfig(), "cpu")
    model(idx, idx).backward()
    adamw.step()
    checkpoint.save_train_state(ModelFolder(tmp_path), model, adamw, {"step": 1})
    low = GPT(CFG)
    in_backward = build_optimizer(low, TrainConfig(low_memory=True), "cpu")
    checkpoint.load_train_state(ModelFolder(tmp_path), low, in_backward)
    for p, q in zip(model.parameters(), low.parameters()):
        saved, loaded = adamw.state[p]["exp_avg_sq"], in_backward.state[q]["exp_avg_sq"]
        assert loaded.dtype == torch.bfloat16 and torch.allclose(loaded.float(), saved, rtol=1e-2, atol=1e-12)
    low(idx, idx).backward()                        # a step in backward from the loaded moments
    checkpoint.save_train_state(ModelFolder(tmp_path), low, in_backward, {"step": 2})
    back = GPT(CFG)
    again = build_optimizer(back, TrainConfig(), "cpu")
    checkpoint.load_train_state(ModelFolder(tmp_path), back, again)
    assert all(st["exp_avg"].dtype == torch.float32 and st["step"].item() == 2 for st in again.state.values())
    back(idx, idx).backward()
    again.step()
