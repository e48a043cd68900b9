"""Take a model out of NimLLM: a `transformers` folder, or a GGUF file for llama.cpp and Ollama.

NimLLM's GPT is `ArceeForCausalLM` weight for weight (RMSNorm, rotate-half rotary embeddings, a
non-gated MLP, tied embeddings, no biases), so the export only renames tensors and splits the
fused q/k/v projection. The tokenizer is the same byte-level BPE file, with its special tokens and
a chat template that renders exactly what `Tokenizer.render_conversation` does.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from nimllm.config import ModelConfig, ModelFolder, UserError
from nimllm.deltas import load_remembered
from nimllm.model import GPT
from nimllm.tokenizer import ROLE_TOKENS, SPECIAL_TOKENS, Tokenizer

try:
    import gguf
except ImportError:   # optional: only the GGUF export needs it
    gguf = None

# Tokenizer.render_conversation in the Jinja that transformers and llama.cpp read: `<|role|>content<|end|>`
# per message (a tool's output under `<|tool_result|>`), and a tool call, where there are any, as the
# assistant's turn `<|assistant|><|tool_call|>command<|/tool_call|>`
CHAT_TEMPLATE = (
    "{% set role_tokens = " + json.dumps(ROLE_TOKENS) + " %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool_call' %}"
    "{{ '<|assistant|><|tool_call|>' + message['content'] + '<|/tool_call|>' }}"
    "{% else %}{{ role_tokens[message['role']] + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
EOT, PAD, END = (SPECIAL_TOKENS.index(t) for t in ("<|endoftext|>", "<|pad|>", "<|end|>"))
GGUF_TYPES = ("f32", "f16", "q8_0")


def layer_tensors(model: GPT) -> list[tuple[str, str, torch.Tensor]]:
    """(transformers name, GGUF name, tensor) of every weight, q/k/v split out of the fused projection."""
    C = model.cfg.n_embd
    named = [("model.embed_tokens.weight", "token_embd.weight", model.wte.weight)]
    for i, block in enumerate(model.blocks):
        hf, gg = f"model.layers.{i}.", f"blk.{i}."
        q, k, v = block.attn.qkv.weight.split(C, dim=0)             # rows: q, then k, then v
        named += [
            (hf + "input_layernorm.weight", gg + "attn_norm.weight", block.attn_norm.weight),
            (hf + "self_attn.q_proj.weight", gg + "attn_q.weight", q),
            (hf + "self_attn.k_proj.weight", gg + "attn_k.weight", k),
            (hf + "self_attn.v_proj.weight", gg + "attn_v.weight", v),
            (hf + "self_attn.o_proj.weight", gg + "attn_output.weight", block.attn.proj.weight),
            (hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", block.mlp_norm.weight),
            (hf + "mlp.up_proj.weight", gg + "ffn_up.weight", block.mlp.up.weight),
            (hf + "mlp.down_proj.weight", gg + "ffn_down.weight", block.mlp.down.weight),
        ]
    named.append(("model.norm.weight", "output_norm.weight", model.norm.weight))
    return [(hf, gg, t.detach().float().contiguous()) for hf, gg, t in named]


def load_for_export(folder: ModelFolder) -> tuple[GPT, Tokenizer]:
    model, _ = load_remembered(folder, "cpu")
    if model.cfg.qk_norm:
        raise UserError("this model normalises its queries and keys (--qk-norm), which the Arcee architecture of "
                        "transformers and llama.cpp does not: it cannot be exported")
    return model, Tokenizer.load(folder.tokenizer)


# ---- transformers ------------------------------------------------------------------------------

def hf_config(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["ArceeForCausalLM"],
        "model_type": "arcee",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_ratio * cfg.n_embd,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.head_dim,
        "hidden_act": cfg.activation,                      # "gelu" and "relu2" are transformers' names too
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,                                          # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # 5.x
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "pad_token_id": PAD,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def hf_tokenizer_config(cfg: ModelConfig) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,     # decoding must give back exactly the text encoded
        "model_max_length": cfg.block_size,
        "chat_template": CHAT_TEMPLATE,
    }


def export_hf(folder: ModelFolder, out_dir: Path) -> Path:
    """A folder that `AutoModelForCausalLM` and `AutoTokenizer` load with no custom code. It is
    built beside out_dir and renamed into place, so it appears complete or not at all."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} already exists and is not an empty folder; choose a new one")
    model, tokenizer = load_for_export(folder)
    cfg = model.cfg
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.building-"))
    try:
        tensors = {hf: t for hf, _, t in layer_tensors(model)}   # lm_head is tied to embed_tokens
        save_file(tensors, build / "model.safetensors", metadata={"format": "pt"})
        files = {
            "config.json": hf_config(cfg),
            "generation_config.json": {"bos_token_id": EOT, "eos_token_id": [EOT, END], "pad_token_id": PAD},
            "tokenizer_config.json": hf_tokenizer_config(cfg),
            "special_tokens_map.json": {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"},
        }
        for name, obj in files.items():
            (build / name).write_text(json.dumps(obj, indent=2) + "\n")
        tokenizer.save(build / "tokenizer.json")
        if out_dir.exists():
            out_dir.rmdir()    # empty, checked above
        os.rename(build, out_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return out_dir


# ---- GGUF --------------------------------------------------------------------------------------

def rotary_pairs_adjacent(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q or k output rows from the rotate-half layout (pairs i, i + D/2) to llama.cpp's
    (pairs 2i, 2i + 1 within each head): what convert_hf_to_gguf.py does for Llama and Arcee."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).transpose(1, 2).reshape(rows, cols)


def gguf_vocab(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens (as the byte-level strings of tokenizer.json), their types and the BPE merges. The
    model's embedding is padded to a multiple of 64 rows; those ids get unused placeholders."""
    spec = json.loads(tokenizer.hf.to_str())
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    by_id.update({a["id"]: a["content"] for a in spec["added_tokens"]})
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i < len(SPECIAL_TOKENS) else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, types, merges


def export_gguf(folder: ModelFolder, out_file: Path, outtype: str = "f32") -> Path:
    """One GGUF file (architecture `arcee`) with the tokenizer and chat template inside."""
    if gguf is None:
        raise UserError("GGUF export needs the gguf package: pip install 'nimllm[export]' (or pip install gguf)")
    out_file = Path(out_file).expanduser().resolve()
    if outtype not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {outtype!r}; choose one of {', '.join(GGUF_TYPES)}")
    if out_file.exists():
        raise UserError(f"{out_file} already exists; choose a new file name")
    model, tokenizer = load_for_export(folder)
    cfg = model.cfg
    if cfg.activation != "relu2":
        raise UserError(
            "llama.cpp's Arcee graph always applies squared ReLU, and this model was trained with GELU, so "
            "its GGUF would compute something else. Train a ReLU² model (`nimllm --train FILE --activation "
            "relu2 --model NEW`) to export GGUF, or export this one with `--format hf`")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "arcee")
    try:
        write_gguf_metadata(writer, cfg, tokenizer, outtype, folder.root.name)
        for _, name, tensor in layer_tensors(model):
            if name.endswith(("attn_q.weight", "attn_k.weight")):
                tensor = rotary_pairs_adjacent(tensor, cfg.n_head)
            add_gguf_tensor(writer, name, tensor.numpy(), outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)
    return out_file


def write_gguf_metadata(writer, cfg: ModelConfig, tokenizer: Tokenizer, outtype: str, name: str) -> None:
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.mlp_ratio * cfg.n_embd)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_head)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    tokens, types, merges = gguf_vocab(tokenizer, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")     # byte-level BPE
    writer.add_tokenizer_pre("gpt-2")      # GPT-2's pre-tokenizer regex, which ByteLevel uses
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_eot_token_id(tokenizer.special("<|end|>"))
    writer.add_pad_token_id(tokenizer.special("<|pad|>"))
    writer.add_add_bos_token(False)        # NimLLM puts nothing before a prompt
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def add_gguf_tensor(writer, name: str, array, outtype: str) -> None:
    """Norm gains stay float32 (as llama.cpp's own converter keeps them); matrices take outtype."""
    if array.ndim == 1 or outtype == "f32":
        writer.add_tensor(name, array)
    elif outtype == "f16":
        writer.add_tensor(name, array.astype("float16"))
    else:
        quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
