"""The training-speed benchmark compares like with like: its eager reference computes NimLLM's
function."""
import sys
from pathlib import Path

import torch

from nimllm.config import ModelConfig
from nimllm.model import GPT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from reference_gpt import ReferenceGPT  # noqa: E402

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
