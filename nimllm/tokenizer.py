"""Byte-level BPE: text to token ids and back, trained on the user's own corpus.

A thin wrapper over HuggingFace `tokenizers`. Every byte is in the vocabulary and nothing is
normalised, so any Unicode string encodes, and decoding gives back exactly the string encoded.
"""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from nimllm.config import UserError
from nimllm.fileio import atomic_write

# ids 0..15 in this order; the reserved ones keep later additions from shifting a trained vocabulary
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",            # end of a chat turn
    "<|tool_call|>",
    "<|/tool_call|>",
    "<|tool_result|>",
    "<|/tool_result|>",
    *(f"<|reserved_{i}|>" for i in range(6)),
]
MAX_WORD = 256   # the longest word the trainer is given; longer runs are cut (see short_words)
LONG_RUN = re.compile(rf"\S{{{MAX_WORD + 1},}}|\s{{{MAX_WORD + 1},}}")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "tool": "<|tool_result|>",
               "tool_call": "<|assistant|>"}   # a tool call is an assistant turn spent on running something


def json_messages(value) -> list[tuple[str, str]]:
    """A conversation stored as JSON, a list of {"role": ..., "content": ...} objects, as the
    (role, content) messages render_conversation takes; ValueError if it is anything else."""
    if not isinstance(value, list) or not value:
        raise ValueError("messages must be a non-empty list")
    messages = [(m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None) for m in value]
    if any(role not in ROLE_TOKENS or not isinstance(content, str) for role, content in messages):
        raise ValueError('each message must be {"role": ..., "content": "..."} with a known role')
    return messages


def short_words(texts: Iterable[str]) -> Iterator[str]:
    """The texts with every run of more than MAX_WORD characters without a space (or of spaces) cut into
    pieces of MAX_WORD, each a text of its own, so that no word the trainer sees is longer. `tokenizers`
    merges inside one word in time quadratic in its length: a 400 KB word took a minute, a 50 MB line
    of `a` never finished. A token that long would be of no use anyway."""
    for text in texts:
        start = 0
        for run in LONG_RUN.finditer(text):
            yield text[start:run.start()]
            yield from (text[i:min(i + MAX_WORD, run.end())] for i in range(run.start(), run.end(), MAX_WORD))
            start = run.end()
        yield text[start:]


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        if [hf.token_to_id(t) for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
            raise UserError("this tokenizer does not have NimLLM's special tokens")
        # Text that only looks like a special token ("<|endoftext|>" typed by a user, or found in
        # a corpus) must stay plain bytes: a special id is something code puts in, never text.
        # tokenizer.json does not store this flag, so it is set on every load.
        hf.encode_special_tokens = True
        self.hf = hf
        self.special_ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
            show_progress=sys.stdout.isatty(),   # its bars of reading, counting and merging (else blank lines)
        )
        hf.train_from_iterator(short_words(texts), trainer=trainer)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # `tokenizers` raises a bare Exception for a missing or malformed file
            raise UserError(f"cannot read the tokenizer {path}: {e}") from None
        return cls(hf)

    def with_dropout(self, p: float) -> Tokenizer:
        """A copy that skips each merge with probability p (BPE-dropout, Provilkov et al. 2020): the same
        vocabulary, a text spelled in other tokens each time it is encoded. For training data only."""
        hf = HFTokenizer.from_str(self.hf.to_str())
        hf.model.dropout = p
        return Tokenizer(hf)

    def save(self, path: str | Path) -> None:
        atomic_write(Path(path), self.hf.to_str().encode("utf-8"))

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Like encode, over many texts at once on all cores."""
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def render_conversation(self, messages: list[tuple[str, str]], add_generation_prompt: bool = False,
                            context_roles: tuple[str, ...] = ("tool",)) -> tuple[list[int], list[int]]:
        """The chat template: `<|role|>content<|end|>` per message, then `<|assistant|>` when the model
        is to answer. Tools: a ("tool_call", command) message is the assistant's turn spent on a call,
        `<|assistant|><|tool_call|>command<|/tool_call|>`, and ("tool", output) brings back what it
        printed, `<|tool_result|>output<|end|>` (several calls are several such pairs). Returns ids and
        a loss mask that is 1 on what was said (content and its closing token, by anyone but a tool: a
        user's statement is what memory learns, a command's output is not the model's to predict) and
        0 on role tokens and tool output (on what `context_roles` said)."""
        ids, mask = [], []
        for role, content in messages:
            said = self.encode(content) + [self.special("<|end|>")]
            if role == "tool_call":
                said = [self.special("<|tool_call|>")] + said[:-1] + [self.special("<|/tool_call|>")]
            ids += [self.special(ROLE_TOKENS[role])] + said
            mask += [0] + [int(role not in context_roles)] * len(said)
        if add_generation_prompt:
            ids.append(self.special("<|assistant|>"))
            mask.append(0)
        return ids, mask

    @property
    def fingerprint(self) -> str:
        """A short hash of all of the tokenizer (vocabulary, merges, settings), which token shards record:
        the ids of another tokenizer would mean other text."""
        return hashlib.sha256(self.hf.to_str().encode("utf-8")).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def special(self, name: str) -> int:
        return self.special_ids[name]

    @property
    def eot_id(self) -> int:
        return self.special_ids["<|endoftext|>"]
