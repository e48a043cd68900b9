"""Corpus -> token shards -> batches.

A corpus is a file or a folder of text files. Preparing it streams the text in pieces of about
1 MB, tokenizes them, and appends the ids to flat binary shards, so a corpus larger than memory
works. Training then reads windows of tokens straight from memory-mapped shards.

The validation split is held out before tokenizing: for a single file, the last tenth of its
characters (as nanoGPT splits tinyshakespeare); for a folder, whole files picked by a hash of
their path until they make up about a tenth of the bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from nimllm.config import UserError
from nimllm.fileio import atomic_write, temp_prefix
from nimllm.tokenizer import Tokenizer, json_messages

BLOCK_BYTES = 1 << 20      # a file is read in pieces of about this size, cut after a newline
SHARD_TOKENS = 1 << 28     # at most 256M tokens per shard file
BATCH_CHARS = 8 << 20      # text handed to the tokenizer at once, spread over all cores
# With BPE dropout the training split is written this many times, the first as the tokenizer spells it and
# the others each with merges dropped at random, so a run of several passes seems to read new token sequences
SEGMENTATIONS = 8
SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "dist-packages"}
BINARY_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".tif", ".tiff", ".psd",
    ".gz", ".tgz", ".bz2", ".xz", ".zst", ".zip", ".7z", ".rar", ".tar", ".whl", ".jar",
    ".pyc", ".pyo", ".so", ".dll", ".dylib", ".o", ".a", ".lib", ".exe", ".bin", ".class",
    ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".odt",
    ".mp3", ".mp4", ".wav", ".ogg", ".flac", ".aiff", ".au", ".avi", ".mov", ".mkv", ".webm",
    ".ttf", ".otf", ".woff", ".woff2", ".eot",
    ".npy", ".npz", ".pt", ".pth", ".ckpt", ".safetensors", ".gguf", ".onnx", ".pkl", ".pickle",
    ".parquet", ".db", ".sqlite", ".iso", ".dmg",
}
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # not encodable; JSON can still spell one, as \ud800


def default_corpus() -> Path:
    """Python's own standard library: text that every installation has."""
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass
class CorpusStats:
    """What reading the corpus came across, for the user's warnings and meta.json."""
    files: int = 0                    # text files read
    documents: int = 0                # files, or JSONL records
    skipped_binary: int = 0
    skipped_unreadable: int = 0
    skipped_lines: int = 0            # JSONL lines that are not an object with a "text" string
    replaced_bytes: int = 0           # invalid UTF-8, each sequence replaced by U+FFFD
    files_with_replaced_bytes: int = 0
    bytes_read: int = 0               # of the files as stored, for the progress bar


@dataclass
class CorpusFile:
    path: Path
    rel: str                          # relative to the corpus root, with '/' separators
    size: int
    jsonl: bool


class Chunk(NamedTuple):
    split: str                        # "train" or "val"
    text: str                         # a document, or a piece of one of about BLOCK_BYTES
    ends_document: bool               # an end-of-text token follows this chunk
    messages: list | None = None      # a conversation (JSONL "messages"), rendered with the chat template


def decode_utf8(data: bytes) -> tuple[str, int]:
    """`data.decode("utf-8", errors="replace")`, and how many bytes were invalid."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        # surrogateescape spells each invalid byte as a lone surrogate, which valid UTF-8 never holds
        invalid = len(LONE_SURROGATE.findall(data.decode("utf-8", errors="surrogateescape")))
        return data.decode("utf-8", errors="replace"), invalid


def block_end(data: bytes) -> int:
    """Where to cut a block so that decoding the pieces equals decoding the whole: after the last
    newline, or, in a block without one, before the last byte that can start a character."""
    cut = data.rfind(b"\n") + 1
    if cut:
        return cut
    for i in range(len(data) - 1, max(len(data) - 4, -1), -1):  # at most 3 continuation bytes
        if data[i] & 0xC0 != 0x80:
            return i
    return len(data)  # three continuation bytes end a character or are stray: any sequence is over


def read_blocks(path: Path, stats: CorpusStats, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """The text of a file in pieces of about block_bytes, never holding more than two of them."""
    rest, replaced = b"", 0
    with open(path, "rb") as f:
        while data := f.read(block_bytes):
            stats.bytes_read += len(data)
            data = rest + data
            cut = block_end(data)
            text, invalid = decode_utf8(data[:cut])
            rest, replaced = data[cut:], replaced + invalid
            if text:
                yield text
        if rest:
            text, invalid = decode_utf8(rest)
            replaced += invalid
            yield text
    stats.replaced_bytes += replaced
    stats.files_with_replaced_bytes += replaced > 0


def mark_document_ends(pieces: Iterator[tuple[str, str]]) -> Iterator[Chunk]:
    """Chunks from the (split, text) pieces of one document: the last piece in each split ends it."""
    previous = None
    for piece in pieces:
        if previous:
            yield Chunk(*previous, ends_document=piece[0] != previous[0])
        previous = piece
    if previous:
        yield Chunk(*previous, ends_document=True)


def named_like_binary(path: Path) -> bool:
    return path.suffix.lower() in BINARY_SUFFIXES


def walk_corpus(root: Path) -> list[tuple[Path, str]]:
    """The files of a corpus, unread, in a fixed order, with their path relative to root.
    Hidden entries, caches and installed packages are left out."""
    if root.is_file():
        return [(root, root.name)]
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in SKIP_DIRS)
        for name in sorted(names):
            if not name.startswith("."):
                path = Path(folder, name)
                found.append((path, path.relative_to(root).as_posix()))
    return found


def corpus_bytes(path: Path) -> int:
    """The size of a corpus's text files, read from the file system alone."""
    return sum(file.stat().st_size for file, _ in walk_corpus(path) if not named_like_binary(file))


def corpus_fingerprint(path: str | Path) -> str:
    """A short hash of the corpus files' names, sizes and modification times: it changes when the
    corpus does, without reading a byte of it. Of several corpora, a hash of theirs."""
    if isinstance(path, list):
        return hashlib.sha256(" ".join(map(corpus_fingerprint, path)).encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for file, rel in walk_corpus(Path(path).expanduser()):
        if named_like_binary(file):
            continue
        try:
            st = file.stat()
        except OSError:
            continue
        digest.update(os.fsencode(rel) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class Corpus:
    """A file or folder of text: its text files, which split each byte belongs to, and what
    reading it found (`stats`, complete once `chunks()` is exhausted)."""

    def __init__(self, path: str | Path, val_fraction: float = 0.1):
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, not {val_fraction}")
        self.root, self.val_fraction, self.stats = Path(path).expanduser(), val_fraction, CorpusStats()
        if not self.root.exists():
            raise UserError(f"no such file or folder: {path}")
        self.files = self.text_files()
        if not self.files:
            skipped = self.stats.skipped_binary + self.stats.skipped_unreadable
            note = f" ({skipped} binary or unreadable files skipped)" if skipped else ""
            raise UserError(f"{path} has no text to train on{note}")
        self.total_bytes = sum(f.size for f in self.files)
        self.val_files = self.choose_val_files() if len(self.files) > 1 else set()

    def text_files(self) -> list[CorpusFile]:
        """The non-empty text files: binaries (by their name, or a NUL byte near the start) and
        unreadable files are counted and skipped, except that a corpus of one unreadable file is an error."""
        files = []
        for path, rel in walk_corpus(self.root):
            if named_like_binary(path):
                self.stats.skipped_binary += 1
                continue
            try:
                if not path.is_file():  # a socket, a broken link...
                    continue
                with open(path, "rb") as f:
                    head, size = f.read(8192), os.fstat(f.fileno()).st_size
            except OSError as e:
                if self.root.is_file():
                    raise UserError(f"cannot read {path}: {e.strerror}") from None
                self.stats.skipped_unreadable += 1
                continue
            if b"\0" in head:
                self.stats.skipped_binary += 1
            elif size:
                files.append(CorpusFile(path, rel, size, jsonl=path.suffix.lower() == ".jsonl"))
        return files

    def choose_val_files(self) -> set[str]:
        """Whole files, about val_fraction of the bytes, in an order fixed by a hash of their paths
        (a pseudo-random choice that is the same every time). Files that would overshoot are passed
        over; if all would, the smallest file is it."""
        budget = self.val_fraction * self.total_bytes
        chosen, size = set(), 0
        for f in sorted(self.files, key=lambda f: hashlib.sha256(os.fsencode(f.rel)).digest()):
            if size + f.size <= budget:
                chosen.add(f.rel)
                size += f.size
        return chosen or {min(self.files, key=lambda f: f.size).rel}

    def chunks(self) -> Iterator[Chunk]:
        """The text of the corpus, tagged by split, in order; never more than ~2 MB of it at once."""
        if len(self.files) == 1:
            yield from self.split_file_chunks(self.files[0])
            return
        for f in self.files:
            split = "val" if f.rel in self.val_files else "train"
            if f.jsonl:
                yield from self.jsonl_chunks(f, lambda offset, split=split: split)
            else:
                yield from self.file_chunks(f, lambda text, split=split: [(split, text)])

    def split_file_chunks(self, f: CorpusFile) -> Iterator[Chunk]:
        """A corpus of one file: the end of it is the validation split."""
        if f.jsonl:  # whole records, those starting in the last val_fraction of the bytes
            val_start = int(f.size * (1 - self.val_fraction))
            yield from self.jsonl_chunks(f, lambda offset: "val" if offset >= val_start else "train")
            if not self.stats.documents:
                raise UserError(f'{f.path} has no line with a "text" string, like {{"text": "..."}}')
            return
        # Character-exact, like nanoGPT's data[int(n * 0.9):], which takes a first pass to count them
        n = sum(len(text) for text in read_blocks(f.path, CorpusStats()))
        boundary, position = int(n * (1 - self.val_fraction)), 0

        def split_at_boundary(text: str) -> list[tuple[str, str]]:
            nonlocal position
            cut = min(max(boundary - position, 0), len(text))
            position += len(text)
            return [(s, t) for s, t in (("train", text[:cut]), ("val", text[cut:])) if t]

        yield from self.file_chunks(f, split_at_boundary)

    def file_chunks(self, f: CorpusFile, split_text) -> Iterator[Chunk]:
        """A file as one document, its blocks tagged by `split_text(text) -> [(split, text)]`."""
        self.stats.files += 1
        self.stats.documents += 1
        pieces = (piece for text in read_blocks(f.path, self.stats) for piece in split_text(text))
        yield from mark_document_ends(pieces)

    def jsonl_chunks(self, f: CorpusFile, split_at) -> Iterator[Chunk]:
        """One document per line's "text", in the split `split_at(byte offset of the line)` says."""
        self.stats.files += 1
        replaced_before, offset = self.stats.replaced_bytes, 0
        with open(f.path, "rb") as lines:
            for line in lines:
                split, offset = split_at(offset), offset + len(line)
                self.stats.bytes_read += len(line)
                if not line.strip():
                    continue
                text, invalid = decode_utf8(line)
                self.stats.replaced_bytes += invalid
                try:
                    record = json.loads(text)
                except ValueError:
                    record = None
                messages = conversation(record)
                if messages:
                    self.stats.documents += 1
                    text = "\n".join(content for _, content in messages)
                    yield Chunk(split, LONE_SURROGATE.sub("\ufffd", text), ends_document=True, messages=messages)
                elif not (isinstance(record, dict) and isinstance(record.get("text"), str)):
                    self.stats.skipped_lines += 1
                elif record["text"]:
                    self.stats.documents += 1
                    yield Chunk(split, LONE_SURROGATE.sub("\ufffd", record["text"]), ends_document=True)
        self.stats.files_with_replaced_bytes += self.stats.replaced_bytes > replaced_before


def conversation(record) -> list[tuple[str, str]] | None:
    """The messages of a JSONL record {"messages": [{"role": ..., "content": ...}, ...]}, or None."""
    try:
        return json_messages(record["messages"])
    except (TypeError, KeyError, ValueError):
        return None


class Corpora:
    """Several corpora read as one: the user's text, split its own way, and what is mixed into it (the
    chat and agent skills), all of it training text, so that the validation loss is the user's text."""

    def __init__(self, paths: list, val_fraction: float = 0.1):
        self.parts = [Corpus(p, val_fraction) for p in paths]
        self.root = self.parts[0].root
        self.total_bytes = sum(c.total_bytes for c in self.parts)

    @property
    def stats(self) -> CorpusStats:
        return CorpusStats(*(sum(getattr(c.stats, f.name) for c in self.parts) for f in fields(CorpusStats)))

    def chunks(self) -> Iterator[Chunk]:
        yield from self.parts[0].chunks()
        for corpus in self.parts[1:]:
            yield from (chunk._replace(split="train") for chunk in corpus.chunks())


def open_corpus(path, val_fraction: float = 0.1) -> Corpus | Corpora:
    """A path is one corpus; a list of paths, several read as one."""
    return Corpora(path, val_fraction) if isinstance(path, list) else Corpus(path, val_fraction)


def iter_texts_for_tokenizer(path: str | Path, max_bytes: int = 50_000_000,
                             val_fraction: float = 0.1) -> Iterator[str]:
    """The start of the training split, up to about max_bytes: enough to learn a vocabulary from,
    and quick even for a huge corpus."""
    seen = 0
    for chunk in open_corpus(path, val_fraction).chunks():
        if chunk.split == "train":
            yield chunk.text
            seen += len(chunk.text.encode("utf-8"))
            if seen >= max_bytes:
                return


@dataclass
class SplitInfo:
    tokens: int = 0
    bytes: int = 0                    # UTF-8 bytes of the text the tokens came from, for bits per byte
    documents: int = 0                # end-of-text tokens
    shards: int = 0


@dataclass
class CorpusInfo:
    """meta.json of a prepared corpus."""
    corpus: str
    fingerprint: str
    dtype: str
    vocab_size: int
    val_fraction: float
    train: SplitInfo
    val: SplitInfo
    stats: CorpusStats
    tokenizer: str | None = None      # Tokenizer.fingerprint of the tokenizer the ids come from
    bpe_dropout: float = 0.0          # of the training split's copies after the first (SEGMENTATIONS in all)
    segmentations: int = 1            # copies of the training split: train.tokens counts them all

    @classmethod
    def load(cls, folder: str | Path) -> CorpusInfo:
        meta = json.loads((Path(folder) / "meta.json").read_text())
        return cls(**{**meta, "train": SplitInfo(**meta["train"]), "val": SplitInfo(**meta["val"]),
                      "stats": CorpusStats(**meta["stats"])})


def prepared_with(folder: str | Path, tokenizer: Tokenizer, bpe_dropout: float = 0.0) -> bool:
    """Whether `folder` holds complete shards made with this very tokenizer and BPE dropout. A run killed
    before its first checkpoint and started again with another --vocab-size has a new tokenizer beside the
    old shards, whose ids would index past the model's embedding or silently mean other text."""
    try:
        info = CorpusInfo.load(folder)
        return info.tokenizer == tokenizer.fingerprint and info.bpe_dropout == bpe_dropout
    except (OSError, ValueError, TypeError, KeyError):   # missing, or damaged: made again
        return False


class ShardWriter:
    """Appends token ids to {split}_000.bin, {split}_001.bin, ... of at most shard_tokens each."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.info, self.file, self.in_shard = SplitInfo(), None, 0

    def write(self, ids: list[int]) -> None:
        ids = np.asarray(ids, dtype=self.dtype)
        self.info.tokens += len(ids)
        while len(ids):
            if self.file is None or self.in_shard == self.shard_tokens:
                self.close()
                self.file = open(self.folder / f"{self.split}_{self.info.shards:03d}.bin", "wb")
                self.info.shards, self.in_shard = self.info.shards + 1, 0
            part, ids = ids[:self.shard_tokens - self.in_shard], ids[self.shard_tokens - self.in_shard:]
            part.tofile(self.file)
            self.in_shard += len(part)

    def close(self) -> None:
        if self.file:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None


@contextmanager
def bytes_progress(total: int, quiet: bool):
    """A bar of corpus bytes tokenized, only for a person watching a terminal."""
    columns = (TextColumn("tokenizing"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=quiet or not sys.stdout.isatty()) as progress:
        task = progress.add_task("tokenizing", total=total)
        yield lambda done: progress.update(task, completed=done)


def batched(chunks: Iterator[Chunk], max_chars: int = BATCH_CHARS) -> Iterator[list[Chunk]]:
    batch, size = [], 0
    for chunk in chunks:
        batch.append(chunk)
        size += len(chunk.text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def tokenized(chunks: Iterator[Chunk], tokenizer: Tokenizer) -> Iterator[list[tuple[Chunk, list[int]]]]:
    """Chunks with their token ids as training reads them, a batch at a time (encoded on all cores):
    a conversation rendered by the chat template, and <|endoftext|> after the end of a document."""
    for batch in batched(chunks):
        pairs, plain = [], iter(tokenizer.encode_batch([c.text for c in batch if not c.messages]))
        for chunk in batch:   # a conversation's joined text is never encoded: its template is
            ids = tokenizer.render_conversation(chunk.messages)[0] if chunk.messages else next(plain)
            pairs.append((chunk, ids + [tokenizer.eot_id] if chunk.ends_document else ids))
        yield pairs


def prepare_corpus(path: str | Path, tokenizer: Tokenizer, out_dir: str | Path, val_fraction: float = 0.1,
                   *, block_size: int, bpe_dropout: float = 0.0, quiet: bool = False,
                   shard_tokens: int = SHARD_TOKENS) -> CorpusInfo:
    """Tokenize a corpus into train_*.bin and val_*.bin shards and meta.json in out_dir; with bpe_dropout,
    SEGMENTATIONS - 1 more copies of the training split follow, tokenized with dropout. The folder
    appears complete or not at all: it is built beside out_dir and renamed into place."""
    corpus = open_corpus(path, val_fraction)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=temp_prefix(out_dir), suffix=".tmp"))
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    writers = {split: ShardWriter(build, split, dtype, shard_tokens) for split in ("train", "val")}
    try:
        with bytes_progress(corpus.total_bytes, quiet) as show:
            for batch in tokenized(corpus.chunks(), tokenizer):
                for chunk, ids in batch:
                    writer = writers[chunk.split]
                    writer.write(ids)
                    writer.info.bytes += len(chunk.text.encode("utf-8"))
                    writer.info.documents += chunk.ends_document
                show(corpus.stats.bytes_read)
        if not corpus.stats.documents:
            raise UserError(f"{path} has no text to train on")
        segmentations = SEGMENTATIONS if bpe_dropout else 1
        dropped = tokenizer.with_dropout(bpe_dropout) if bpe_dropout else tokenizer
        for _ in range(segmentations - 1):   # (the corpus read again for each: it need not fit in memory)
            train_chunks = (c for c in open_corpus(path, val_fraction).chunks() if c.split == "train")
            for batch in tokenized(train_chunks, dropped):
                writers["train"].write([i for _, ids in batch for i in ids])
        for writer in writers.values():
            writer.close()
        train, val = writers["train"].info, writers["val"].info
        if train.tokens < block_size + 1:
            raise UserError(f"corpus too short: {train.tokens} training tokens, need at least "
                            f"{block_size + 1} for one context window of {block_size}")
        if val.tokens < 2:
            raise UserError(f"corpus too short: {val.tokens} validation tokens, need at least 2")
        info = CorpusInfo(str(corpus.root.resolve()), corpus_fingerprint(path), dtype.name,
                          tokenizer.vocab_size, val_fraction, train, val, corpus.stats, tokenizer.fingerprint,
                          bpe_dropout, segmentations)
        atomic_write(build / "meta.json", json.dumps(asdict(info), indent=2).encode())
        if out_dir.exists():
            old = out_dir.with_name(f"{temp_prefix(out_dir)}old.tmp")
            os.rename(out_dir, old)
            os.rename(build, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(build, out_dir)
        return info
    finally:  # after success the build folder is out_dir; after an error or ^C, nothing is left of it
        for writer in writers.values():
            writer.close()
        shutil.rmtree(build, ignore_errors=True)


class TokenShards:
    """One split of a prepared corpus, as read-only memory maps of its shards."""

    def __init__(self, folder: str | Path, split: str):
        info = CorpusInfo.load(folder)
        paths = sorted(Path(folder).glob(f"{split}_*.bin"))
        self.shards = [np.memmap(p, dtype=info.dtype, mode="r") for p in paths]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])  # where each shard begins in the split
        self.num_tokens = int(self.starts[-1])
        self.num_bytes = getattr(info, split).bytes
        # tokens in one pass over the text: the training split may hold several segmentations of it
        self.tokens_per_pass = self.num_tokens // (info.segmentations if split == "train" else 1)

    def get_batch(self, batch_size: int, block_size: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (B, T) of windows at random offsets, uniform over every window inside one shard,
        y being x moved on by one token. Only `generator` is drawn from: the batch is a function of
        its state, so a resumed run sees the same batches."""
        windows = torch.tensor([max(len(s) - block_size, 0) for s in self.shards])  # starts per shard
        if not windows.sum():
            raise UserError(f"corpus too short: {self.num_tokens} tokens, need at least {block_size + 1} "
                            f"for one context window of {block_size}")
        ends = windows.cumsum(0)
        picks = torch.randint(int(ends[-1]), (batch_size,), generator=generator)
        shard_ids = torch.searchsorted(ends, picks, right=True)
        offsets = picks - ends[shard_ids] + windows[shard_ids]
        rows = [self.shards[s][o:o + block_size + 1] for s, o in zip(shard_ids.tolist(), offsets.tolist())]
        return as_xy(np.stack(rows))

    def iter_windows(self, block_size: int, batch_size: int,
                     max_tokens: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """x, y batches of consecutive windows from the start of the split, for evaluation: every
        token but the first is a target exactly once (the first max_tokens of them, if given).
        A last, shorter window comes alone, in a batch of one."""
        targets = self.num_tokens - 1 if max_tokens is None else min(max_tokens, self.num_tokens - 1)
        full, rest = divmod(max(targets, 0), block_size)
        for first in range(0, full, batch_size):
            windows = range(first, min(first + batch_size, full))
            yield as_xy(np.stack([self.read(i * block_size, (i + 1) * block_size + 1) for i in windows]))
        if rest:
            yield as_xy(self.read(full * block_size, full * block_size + rest + 1)[None])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens start..stop-1 of the split, across shard boundaries."""
        return np.concatenate([shard[max(start - begin, 0):max(stop - begin, 0)]
                               for shard, begin in zip(self.shards, self.starts)])


def as_xy(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T + 1) token windows -> inputs and targets, (B, T) each."""
    windows = torch.from_numpy(windows.astype(np.int64))
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
