"""The model folder on disk: config, weights and training state, always written atomically
(see fileio). Tensors are stored with safetensors and everything else as JSON: nothing is pickled, so a
model folder received from someone else is safe to open.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from nimllm.fileio import atomic_write, is_temp
from nimllm.config import ModelConfig, ModelFolder, TrainConfig, UserError, dataclass_from_dict
from nimllm.model import GPT


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({e}); restore it or train again with --fresh") from None


# ---- config.json -------------------------------------------------------------------------------

def save_config(folder: ModelFolder, model_cfg: ModelConfig, train_cfg: TrainConfig, preset: str,
                corpora: list[dict]) -> None:
    write_json(folder.config, {"preset": preset, "model": asdict(model_cfg), "train": asdict(train_cfg),
                               "corpora": corpora})


def load_config(folder: ModelFolder) -> dict:
    """config.json with the dataclasses rebuilt; a clear error when there is no model here."""
    folder.require_model()
    raw = read_json(folder.config)
    try:
        raw["model"] = dataclass_from_dict(ModelConfig, raw["model"])
        raw["train"] = dataclass_from_dict(TrainConfig, raw.get("train", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{folder.config} is damaged ({e})") from None
    raw.setdefault("corpora", [])
    return raw


# ---- tensors -----------------------------------------------------------------------------------

def _to_bytes(tensors: dict[str, torch.Tensor], metadata: dict) -> bytes:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return save_safetensors_bytes(cpu, metadata={k: json.dumps(v) for k, v in metadata.items()})


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        data = path.read_bytes()
        tensors = load_safetensors_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {}) or {}
        return tensors, {k: json.loads(v) for k, v in meta.items()}
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"{path} is damaged ({e}); restore it or train again with --fresh") from None


def save_weights(folder: ModelFolder, model: GPT, step: int) -> None:
    atomic_write(folder.weights, _to_bytes(model.state_dict(), {"step": step}))


def load_model(folder: ModelFolder, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """The model saved in `folder`, in float32 on `device`, in eval mode, plus its config.json."""
    cfg = load_config(folder)
    if not folder.weights.exists():
        raise UserError(f"{folder.root} has a config but no weights yet: finish training with `nimllm --train`")
    tensors, _ = _read_tensors(folder.weights)
    with torch.device(device):   # initialised where it runs (103M random numbers on a CPU cost a second)
        model = GPT(cfg["model"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{folder.weights} does not match {folder.config}: {first}") from None
    return model.to(device).eval(), cfg


# ---- training state (weights + optimizer + progress, one file so they can never disagree) -------

def save_train_state(folder: ModelFolder, model: GPT, optimizer: torch.optim.Optimizer, progress: dict,
                     best: dict[str, torch.Tensor] | None = None) -> None:
    """`best`: the weights of the run's lowest validation so far, where they are not the model's own."""
    names = {p: n for n, p in model.named_parameters()}
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (best or {}).items()})
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim.{names[p]}.{key}"] = torch.as_tensor(value)
    atomic_write(folder.train_state, _to_bytes(tensors, {"progress": progress}))


def load_train_state(folder: ModelFolder, model: GPT, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore weights (and optimizer moments) in place; return the saved progress dict."""
    tensors, meta = _read_tensors(folder.train_state)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None:
        names = {p: n for n, p in model.named_parameters()}
        state, params = {}, []
        for group in optimizer.param_groups:
            for p in group["params"]:
                prefix = f"optim.{names[p]}."
                saved = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                if saved:
                    state[len(params)] = saved
                params.append(p)
        sd = optimizer.state_dict()
        sd["state"] = state  # load_state_dict moves each tensor to its parameter's device and dtype
        optimizer.load_state_dict(sd)
    return meta.get("progress", {})


def load_best_weights(folder: ModelFolder) -> dict[str, torch.Tensor] | None:
    """The best weights a training state holds beside its own, read alone; None if it holds none."""
    try:
        with safe_open(str(folder.train_state), framework="pt") as f:
            names = [k for k in f.keys() if k.startswith("best.")]
            return {k[len("best."):]: f.get_tensor(k) for k in names} or None
    except (SafetensorError, OSError) as e:
        raise UserError(f"{folder.train_state} is damaged ({e}); train again with --fresh") from None


def read_progress(folder: ModelFolder) -> dict | None:
    """The progress dict of the saved training state, reading only the file's JSON header."""
    if not folder.train_state.exists():
        return None
    try:
        with open(folder.train_state, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        return json.loads(header.get("__metadata__", {}).get("progress", "{}"))
    except (OSError, ValueError) as e:
        raise UserError(f"{folder.train_state} is damaged ({e}); train again with --fresh") from None


def describe(folder: ModelFolder) -> dict:
    """What `nimllm info` shows: the model's shape, its training progress, its corpora, its files."""
    cfg = load_config(folder)
    m = cfg["model"]
    with torch.device("meta"):
        n_params = GPT(m).num_params()
    progress = read_progress(folder) or {}
    total_steps = progress.get("schedule", progress).get("total_steps", "?")   # (older folders: in progress itself)
    state = ("finished" if progress.get("finished") else "interrupted (run the same train command to resume)") \
        if progress else "not started"
    if "kept_best" in progress:
        state += f"; the weights of step {progress['kept_best']}, its lowest validation"
    files = {p.name: p.stat().st_size for p in sorted(folder.root.iterdir()) if p.is_file() and not is_temp(p)}
    return {
        "folder": folder.root,
        "preset": cfg.get("preset"),
        "parameters": f"{n_params:,}",
        "shape": f"{m.n_layer} layers x {m.n_embd} wide, {m.n_head} heads, context {m.block_size}, "
                 f"vocab {m.vocab_size}, {m.activation}",
        "training": f"step {progress.get('step', 0)} / {total_steps}, {state}",
        "corpora": ", ".join(c["path"] for c in cfg["corpora"]) or "none",
        "files": ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in files.items()),
    }
