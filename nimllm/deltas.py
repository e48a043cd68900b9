"""The stored memories of a model folder: one sparse delta per update (flat indices and values per
tensor, safetensors, in `memory/`), listed in `conversations.sqlite`.

The current weights are the base weights plus every delta not forgotten, added in order; the live
model is built with the very same additions, so a reload is bit-exact, and forgetting a delta
rebuilds the weights as if it had never been added and takes the conversation out of all later
rehearsal. Later deltas stay as they were computed: those that rehearsed it (`nimllm memory show`
names them) may still carry a trace of it, until they are forgotten too.
"""
from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from nimllm import checkpoint
from nimllm.config import ModelFolder, UserError
from nimllm.fileio import atomic_write
from nimllm.metrics import plot_memory
from nimllm.model import GPT
from nimllm.store import Store
from nimllm.update import Delta, apply_delta


def save_delta(path: Path, delta: Delta) -> None:
    tensors = {}
    for name, (indices, values) in delta.items():
        tensors[f"{name}.indices"] = indices.cpu()
        tensors[f"{name}.values"] = values.cpu()
    atomic_write(path, save(tensors))


def load_delta(path: Path) -> Delta:
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a missing or cut file
        raise UserError(f"the memory file {path} is damaged or missing ({e}); `nimllm memory forget` it") from None
    names = {k.rsplit(".", 1)[0] for k in tensors}
    return {n: (tensors[f"{n}.indices"], tensors[f"{n}.values"]) for n in sorted(names)}


def load_remembered(folder: ModelFolder, device: str | torch.device = "cpu",
                    kinds: tuple[str, ...] | None = None) -> tuple[GPT, dict]:
    """The model as the chat left it: the base weights plus every memory not forgotten (with kinds, those
    learned from conversations of these kinds: memory.Memory's kinds). What `nimllm generate`, `eval` and
    `export` use; nothing is written (no store is created)."""
    model, config = checkpoint.load_model(folder, device)
    if folder.store.exists():
        with Store(folder.store) as store:
            for d in store.deltas(kinds=kinds):
                if d.n_weights:
                    apply_delta(model, load_delta(folder.root / d.file))
    return model, config


@contextmanager
def learning_lock(folder: ModelFolder):
    """One change to a model folder's memory at a time, across processes (a second chat waits)."""
    folder.memory.mkdir(parents=True, exist_ok=True)
    with open(folder.memory / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def forget(folder: ModelFolder, store: Store, delta_id: int | None = None) -> list[int]:
    """Forget one memory (with no id, all of them): the next load rebuilds the weights without it.
    Returns the ids forgotten."""
    with learning_lock(folder):
        deltas = store.deltas() if delta_id is None else [store.delta(delta_id)]
        if delta_id is None:
            store.reset()
        elif deltas[0].forgotten is None:
            store.forget_delta(delta_id)
    for d in deltas:   # after the database says so: a kill in between leaves only a stray file
        (folder.root / d.file).unlink(missing_ok=True)
    return [d.id for d in deltas]


def memory_history(folder: ModelFolder, store: Store) -> list[dict]:
    """One row per memory, oldest first, for `nimllm memory list`."""
    titles = {}
    for c in store.conversations():
        if c.learned_delta is not None:
            titles.setdefault(c.learned_delta, []).append(c.title or f"conversation {c.id}")
    return [{"id": d.id, "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(d.created)),
             "weights": d.n_weights, "seconds": round(d.seconds, 2), "conversations": "; ".join(titles.get(d.id, [])),
             "forgotten": d.forgotten is not None} for d in store.deltas(include_forgotten=True)]


def show_memory(folder: ModelFolder, store: Store, delta_id: int) -> str:
    """A memory in words: when, how big, what changed, and the conversation it came from."""
    d = store.delta(delta_id)
    lines = [f"memory {d.id}, {time.strftime('%Y-%m-%d %H:%M', time.localtime(d.created))}: "
             f"{d.n_weights:,} weights in {d.seconds:.2f} s{' (forgotten)' if d.forgotten else ''}",
             f"{d.stats.get('lessons', '?')} lessons, {d.stats.get('steps', '?')} steps | loss on them "
             f"{d.stats.get('loss_before', 0):.3f} -> {d.stats.get('loss_after', 0):.3f}{scaled_note(d.stats)}",
             "most changed: " + ", ".join(f"{n} ({c:,})" for n, c in
                                          sorted(d.stats.get("layers", {}).items(), key=lambda kv: -kv[1])[:5]),
             "rehearsed earlier conversations: " + (", ".join(map(str, d.stats.get("rehearsed", []))) or "none")]
    for c in store.conversations():
        if c.learned_delta == d.id:
            lines += [f"conversation {c.id}:"] + [f"  {m.role}: {m.content}" for m in store.messages(c.id)]
    return "\n".join(lines)


def scaled_note(stats: dict) -> str:
    scale = stats.get("scale", 1.0)
    return "" if scale == 1 else (f" | scaled to {scale:.0%} by the control check" if scale else
                                  " | not kept: it changed the control answers")


def memory_stats(folder: ModelFolder, store: Store, control_kept: list[bool] | None = None) -> dict:
    """Totals over the memories kept, the control answers the model still gives (when given), and
    memory.png: how memory grew."""
    kept = store.deltas()
    plot_memory([d.n_weights for d in kept], [d.seconds for d in kept], folder.root / "memory.png")
    on_disk = sum((folder.root / d.file).stat().st_size for d in kept if (folder.root / d.file).exists())
    return {"memories kept": len(kept), "forgotten": len(store.deltas(include_forgotten=True)) - len(kept),
            "weights changed (sum)": f"{sum(d.n_weights for d in kept):,}",
            "update time (mean)": f"{sum(d.seconds for d in kept) / max(len(kept), 1):.2f} s",
            "conversations": len(store.conversations()), "on disk": f"{on_disk / 1e6:.1f} MB",
            "control answers kept": (f"{sum(control_kept)}/{len(control_kept)} ({sum(control_kept) / len(control_kept):.0%})"
                                     if control_kept else "no control set (train the model again to make one)"),
            "plot": str(folder.root / "memory.png")}
