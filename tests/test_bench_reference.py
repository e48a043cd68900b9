"""The training-speed benchmark compares like with like: its eager reference computes NimLLM's
function, and its optimizer-in-backward makes the update NimLLM's optimizer makes."""
import copy
import sys
from pathlib import Path

import torch

from nimllm.config import ModelConfig, TrainConfig
from nimllm.model import GPT
from nimllm.train import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from reference_gpt import ReferenceGPT  # noqa: E402
from train_speed import OptimizerInBackward  # noqa: E402

CFG = ModelConfig(vocab_size=96, n_layer=2, n_embd=32, n_head=4, block_size=16)


def reference_with_weights_of(model: GPT) -> ReferenceGPT:
    """NimLLM's weights in the reference: the fused qkv matrix split into q, k and v."""
    state = model.state_dict()
    for key in [k for k in state if k.endswith("attn.qkv.weight")]:
        prefix = key.removesuffix("qkv.weight")
        state.update(zip((prefix + "q.weight", prefix + "k.weight", prefix + "v.weight"), state.pop(key).chunk(3)))
    for key in [k for k in state if ".mlp." in k]:
        state[key.replace(".mlp.", ".")] = state.pop(key)
    ref = ReferenceGPT(CFG)
    ref.load_state_dict(state)  # strict: every weight has exactly one place
    return ref


def test_reference_computes_nimllm_function():
    torch.manual_seed(0)
    model = GPT(CFG)
    with torch.no_grad():  # gains other than one, so a mixed-up norm weight would show
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.2)
    ref = reference_with_weights_of(model)
    idx = torch.randint(0, CFG.vocab_size, (3, CFG.block_size))
    targets = torch.randint(0, CFG.vocab_size, (3, CFG.block_size))
    targets[0, :5] = -1
    torch.testing.assert_close(ref(idx), model(idx), atol=1e-5, rtol=0)
    torch.testing.assert_close(ref(idx[:, :7]), model(idx[:, :7]), atol=1e-5, rtol=0)  # a shorter sequence
    torch.testing.assert_close(ref(idx, targets), model(idx, targets), atol=1e-5, rtol=0)


def test_nanogpt_shape_trains_and_ties_embeddings():
    torch.manual_seed(0)
    model = ReferenceGPT(CFG, norm="layer", positions="learned")
    idx = torch.randint(0, CFG.vocab_size, (2, CFG.block_size))
    model(idx, idx).backward()
    assert model.wpe.weight.grad is not None and model.wte.weight.grad is not None
    assert sum(p.numel() for p in model.parameters()) == GPT(CFG).num_params() + CFG.block_size * CFG.n_embd


def test_optimizer_in_backward_matches_a_normal_step():
    torch.manual_seed(0)
    tcfg = TrainConfig(lr=1e-2)
    model = GPT(CFG)
    hooked = copy.deepcopy(model)
    hooked.activation_checkpointing = True  # as the benchmark runs it: recomputation must see the old weights
    optimizer, in_backward = build_optimizer(model, tcfg, "cpu"), OptimizerInBackward(hooked, tcfg, fused=False)
    for _ in range(3):
        idx = torch.randint(0, CFG.vocab_size, (2, CFG.block_size))
        model(idx, idx).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hooked(idx, idx).backward()
        assert all(p.grad is None for p in hooked.parameters())  # each gradient freed once used
    for a, b in zip(model.parameters(), hooked.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert len(in_backward.param_groups) == len(list(model.parameters()))
