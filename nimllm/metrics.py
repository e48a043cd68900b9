"""metrics.jsonl (one JSON object per line, appended as training goes), the loss plot and the memory plot."""
from __future__ import annotations

import io
import json
from pathlib import Path

from nimllm.fileio import atomic_write


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill; everything before it is intact
    return rows


class MetricsLog:
    """Appends records; on resume, forgets records from steps after the checkpoint so the file
    reads like one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None:
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.file = open(path, "a")

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def pyplot():
    """matplotlib's pyplot, imported on first use (which takes a second on a busy CPU)."""
    import matplotlib
    matplotlib.use("Agg")   # no display needed
    import matplotlib.pyplot as plt
    return plt


def _save(fig, png_path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    pyplot().close(fig)
    atomic_write(png_path, buf.getvalue())


def plot_memory(n_weights: list[int], seconds: list[float], png_path: Path) -> None:
    """How memory grew: weights changed per remembered conversation, summed, and each update's time."""
    plt = pyplot()
    fig, (ax, ax_time) = plt.subplots(2, 1, figsize=(7, 5), dpi=100, sharex=True)
    steps = list(range(1, len(n_weights) + 1))
    running, total = [], 0
    for n in n_weights:
        total += n
        running.append(total)
    ax.plot(steps, running, "o-", markersize=3)
    ax.set_ylabel("weights changed (sum)")
    ax.grid(alpha=0.3)
    ax_time.bar(steps, seconds)
    ax_time.set_ylabel("update time (s)")
    ax_time.set_xlabel("memory (one per learned conversation)")
    ax_time.grid(alpha=0.3)
    _save(fig, png_path)


def plot_losses(metrics_path: Path, png_path: Path, title: str = "") -> None:
    """Training and validation loss against optimizer step, as a PNG."""
    plt = pyplot()
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or val:   # (a --time run saves once before its first logged step)
        ax.legend()
    _save(fig, png_path)
