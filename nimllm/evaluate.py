"""Scoring a model on a text: loss per token, bits per byte and perplexity.

`evaluate` scores a split of token shards; training's validation, book training's before/after
report and `nimllm eval` all score with it. `evaluate_text` is `nimllm eval`: the text is read the
way training reads a corpus (a file, or every text file of a folder with binaries skipped, JSONL by
its "text" or "messages" fields, each document followed by <|endoftext|>), so the same text gives
the same figures here as in training's validation.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from nimllm.config import ModelFolder, UserError
from nimllm.data import Corpus, TokenShards, named_like_binary, tokenized
from nimllm.deltas import load_remembered
from nimllm.model import GPT
from nimllm.runtime import Runtime, pick_device
from nimllm.tokenizer import Tokenizer


@torch.no_grad()
def evaluate(model: GPT, shards: TokenShards, rt: Runtime, batch_size: int, max_tokens: int | None,
             progress=None) -> dict:
    """Mean loss per token over the first max_tokens of a split, and the same in bits per byte.
    Training's validation, book training's report and `nimllm eval` all score with this.
    `progress(targets scored so far)` is called after each batch."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in shards.iter_windows(model.cfg.block_size, batch_size, max_tokens):
        with rt.autocast():
            logits = model(x.to(rt.device))
        total += torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.to(rt.device).flatten(),
                                                   reduction="sum").item()
        count += y.numel()
        if progress:
            progress(count)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "bpb": loss / math.log(2) * shards.num_tokens / max(shards.num_bytes, 1)}


class TextTokens(TokenShards):
    """A tokenized text held in memory, read like a split of a prepared corpus."""

    def __init__(self, ids: np.ndarray, num_bytes: int):
        self.shards, self.starts = [ids], np.array([0, len(ids)])
        self.num_tokens, self.num_bytes = len(ids), num_bytes


def open_text(path: Path) -> Corpus:
    """The corpus at path, with a one-line error for what cannot be evaluated."""
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(8192)
        if not head:
            raise UserError(f"{path} is empty: there is no text to evaluate")
        if b"\0" in head or named_like_binary(path):
            raise UserError(f"{path} is a binary file, not text")
    try:
        return Corpus(path)
    except UserError:
        raise UserError(f"{path} has no text files to evaluate") from None


def tokenize_text(path: Path, tokenizer: Tokenizer, progress: Progress) -> TextTokens:
    corpus = open_text(path)
    task = progress.add_task("tokenizing", total=corpus.total_bytes)
    chunks = (chunk for f in corpus.files
              for chunk in (corpus.jsonl_chunks(f, lambda offset: "eval") if f.jsonl
                            else corpus.file_chunks(f, lambda text: [("eval", text)])))
    pieces, num_bytes = [], 0
    for batch in tokenized(chunks, tokenizer):
        for chunk, ids in batch:
            pieces.append(np.asarray(ids, dtype=np.int32))
            num_bytes += len(chunk.text.encode("utf-8"))
        progress.update(task, completed=corpus.stats.bytes_read)
    if not pieces:   # JSONL lines with neither a "text" string nor "messages"
        raise UserError(f'{path} has no text to evaluate (JSONL lines need a "text" string or "messages")')
    return TextTokens(np.concatenate(pieces), num_bytes)   # every document ends in <|endoftext|>: 2+ tokens


def evaluate_text(folder: ModelFolder, path: str | Path, device: str | None = None, batch_size: int = 8,
                  max_tokens: int | None = None) -> dict:
    """Loss per token, perplexity and bits per byte of the model in `folder` on the text at `path`."""
    path = Path(path).expanduser()
    rt = Runtime(pick_device(device))
    model, _ = load_remembered(folder, rt.device)
    tokenizer = Tokenizer.load(folder.tokenizer)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as progress:
        tokens = tokenize_text(path, tokenizer, progress)
        targets = tokens.num_tokens - 1 if max_tokens is None else min(max_tokens, tokens.num_tokens - 1)
        task = progress.add_task("scoring", total=targets)
        result = evaluate(model, tokens, rt, batch_size, max_tokens,
                          progress=lambda done: progress.update(task, completed=done))
    return {"text": str(path), "model": str(folder.root), "tokens": targets, "bytes": tokens.num_bytes,
            "loss": result["loss"], "perplexity": math.exp(result["loss"]), "bpb": result["bpb"]}
