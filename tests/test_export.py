"""Export: a transformers folder that computes NimLLM's function, and a GGUF file that llama.cpp reads
back and runs to the same greedy tokens (where llama.cpp is installed: `bench/llama_cpp`)."""
import json
import shutil
import subprocess

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, real_text, run_cli
from nimllm import checkpoint
from nimllm.config import ModelConfig, ModelFolder, TrainConfig, UserError
from nimllm.export import export_gguf, export_hf, rotary_pairs_adjacent
from nimllm.generate import generate
from nimllm.model import GPT
from nimllm.tokenizer import ROLE_TOKENS, Tokenizer

LLAMA_CPP = REPO / "bench" / "llama_cpp"
TEXT = "Wherefore art thou, Romeo? 1234 — naïve café, 日本語\n\tdef f(x): return x ** 2\n"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([real_text(100_000)], vocab_size=400)


def model_folder(root, tokenizer, activation: str, **changes) -> ModelFolder:
    """A model folder with a real tokenizer and random weights, scaled up so that greedy choices
    are not near-ties. The vocabulary (400) is padded to 448 rows, as training pads it."""
    folder = ModelFolder(root)
    root.mkdir(parents=True)
    tokenizer.save(folder.tokenizer)
    cfg = ModelConfig(vocab_size=448, n_layer=2, n_embd=64, n_head=4, block_size=64, activation=activation,
                      **changes)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0)
    checkpoint.save_config(folder, cfg, TrainConfig(), "tiny", [])
    checkpoint.save_weights(folder, model, 0)
    return folder


@pytest.mark.parametrize("activation", ["gelu", "relu2"])
def test_transformers_loads_the_export_and_computes_the_same_logits(tmp_path, tokenizer, activation):
    folder = model_folder(tmp_path / "model", tokenizer, activation)
    out = export_hf(folder, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "ArceeForCausalLM" and hf.config.hidden_act == activation
    model, _ = checkpoint.load_model(folder)
    idx = torch.randint(0, 448, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)).abs().max() < 1e-4


def test_exported_tokenizer_and_chat_template_give_nimllms_ids(tmp_path, tokenizer):
    out = export_hf(model_folder(tmp_path / "model", tokenizer, "gelu"), tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(out)
    assert hf.encode(TEXT) == tokenizer.encode(TEXT)
    assert hf.decode(tokenizer.encode(TEXT)) == TEXT
    assert (hf.eos_token, hf.pad_token, hf.bos_token) == ("<|endoftext|>", "<|pad|>", None)
    messages = [(role, f"a {role} says: hello, world! {i}") for i, role in enumerate(ROLE_TOKENS)] * 2
    for prompt in (False, True):
        ids = hf.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                     add_generation_prompt=prompt, tokenize=True, return_dict=False)
        assert ids == tokenizer.render_conversation(messages, add_generation_prompt=prompt)[0]


def test_gguf_reads_back_with_nimllms_tensors_and_metadata(tmp_path, tokenizer):
    folder = model_folder(tmp_path / "model", tokenizer, "relu2")
    model, _ = checkpoint.load_model(folder)
    qkv = model.blocks[1].attn.qkv.weight.detach()
    for outtype, qtype in [("f32", gguf.GGMLQuantizationType.F32), ("q8_0", gguf.GGMLQuantizationType.Q8_0)]:
        reader = gguf.GGUFReader(export_gguf(folder, tmp_path / f"m-{outtype}.gguf", outtype))
        tensors = {t.name: t for t in reader.tensors}
        assert len(tensors) == 2 + 2 * 8                        # embedding, final norm, 8 per layer
        assert tensors["token_embd.weight"].shape.tolist() == [64, 448]      # GGUF lists dimensions reversed
        assert tensors["blk.0.ffn_up.weight"].shape.tolist() == [64, 256]
        assert tensors["blk.1.attn_q.weight"].tensor_type == qtype
        assert tensors["blk.1.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        q = torch.from_numpy(gguf.quants.dequantize(tensors["blk.1.attn_q.weight"].data, qtype).copy())
        v = torch.from_numpy(gguf.quants.dequantize(tensors["blk.1.attn_v.weight"].data, qtype).copy())
        tolerance = 0 if outtype == "f32" else 0.02 * qkv.abs().max()
        assert (q.view(64, 64) - rotary_pairs_adjacent(qkv[:64], 4)).abs().max() <= tolerance
        assert (v.view(64, 64) - qkv[128:]).abs().max() <= tolerance

        def field(key):
            return reader.fields[key].contents()
        assert field("general.architecture") == "arcee"
        assert (field("arcee.block_count"), field("arcee.context_length"), field("arcee.embedding_length")) == (2, 64, 64)
        assert (field("arcee.attention.head_count"), field("arcee.feed_forward_length")) == (4, 256)
        tokens = field("tokenizer.ggml.tokens")
        assert len(tokens) == 448 and tokens[5] == "<|end|>" and tokens[447] == "[PAD447]"
        assert field("tokenizer.ggml.add_bos_token") is False
        assert "<|tool_result|>" in field("tokenizer.chat_template")


def llama_cpp_greedy(request: dict) -> dict:
    out = subprocess.run(["node", "greedy.mjs"], input=json.dumps(request), capture_output=True, text=True,
                         cwd=LLAMA_CPP, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not (LLAMA_CPP / "node_modules" / "node-llama-cpp").exists() or not shutil.which("node"),
                    reason="llama.cpp not installed: cd bench/llama_cpp && npm ci --omit=optional --ignore-scripts")
def test_llama_cpp_runs_the_gguf_to_nimllms_greedy_tokens(tmp_path, tokenizer):
    folder = model_folder(tmp_path / "model", tokenizer, "relu2")
    model, _ = checkpoint.load_model(folder)
    prompts = [tokenizer.encode("ROMEO: But soft, what light"), [17, 3, 250, 9]]
    answer = llama_cpp_greedy({"model": str(export_gguf(folder, tmp_path / "m.gguf")), "prompts": prompts,
                               "max_tokens": 40, "threads": 1, "texts": [TEXT]})
    assert answer["tokenized"] == [tokenizer.encode(TEXT)]
    assert answer["tokens"] == [list(generate(model, p, 40, temperature=0)) for p in prompts]


@pytest.mark.slow
def test_export_command_and_its_refusals(tmp_path, tokenizer):
    gelu = model_folder(tmp_path / "gelu", tokenizer, "gelu")
    out = run_cli("export", "--model", gelu.root, "--format", "hf", tmp_path / "hf")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "tokenizer_config.json").exists()
    out = run_cli("export", "--model", gelu.root, "--format", "gguf", tmp_path / "m.gguf")
    assert out.returncode == 1 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "always applies squared ReLU" in out.stderr and "--activation relu2" in out.stderr
    with pytest.raises(UserError, match="not an empty folder"):
        export_hf(gelu, tmp_path / "hf")
    with pytest.raises(UserError, match="already exists"):
        export_gguf(model_folder(tmp_path / "relu2", tokenizer, "relu2"), tmp_path / "hf" / "config.json")
    with pytest.raises(UserError, match="no model in"):
        export_hf(ModelFolder(tmp_path / "nothing"), tmp_path / "hf2")
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "hf2").exists()
    qk_norm = model_folder(tmp_path / "qk", tokenizer, "relu2", qk_norm=True)
    for fmt, dest in (("hf", tmp_path / "hf3"), ("gguf", tmp_path / "qk.gguf")):
        out = run_cli("export", "--model", qk_norm.root, "--format", fmt, dest)
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "--qk-norm" in out.stderr
        assert not dest.exists()
