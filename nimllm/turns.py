"""What a turn of the model is, written once for every face (chat, agent, server, `nimllm generate`):

- `Sampling`: how the tokens are drawn (max_tokens, temperature, top_k, top_p, seed);
- the stop ids: where a turn ends (`turn_stops`), or where plain text ends (`text_stops`), and what a
  turn may not write (`turn_bans`);
- the agent's mode, a system turn before its tasks (`agent_mode`);
- fitting a conversation to the context (`context_budget`, `fit_context`, `fit_prompt`);
- decoding tokens to text as they arrive without cutting a UTF-8 character (`TextStream`);
- reading a turn: its content, or the call it makes, `<|tool_call|>command<|/tool_call|>` (`TurnReader`).

Below the faces, above the tokenizer: token ids and text, no model and no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple

if TYPE_CHECKING:   # only the type: importing `tokenizers` would slow the chat's first prompt
    from nimllm.tokenizer import Tokenizer

CALL, CLOSE, END = "<|tool_call|>", "<|/tool_call|>", "<|end|>"


# ---- sampling -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    """How a reply's tokens are drawn. temperature 0 is greedy; top_k, top_p and seed None are off."""
    max_tokens: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


# ---- stop ids -----------------------------------------------------------------------------------

def turn_stops(tokenizer: Tokenizer, calls: bool = False) -> frozenset[int]:
    """Where a model's turn ends: at any special token (an answer's `<|end|>`, a call's `<|/tool_call|>`,
    the end of text, or a role token it has no place writing), but, where it may make a call (`calls`),
    not at the `<|tool_call|>` that opens one."""
    call = tokenizer.special(CALL)
    return frozenset(i for i in tokenizer.special_ids.values() if not (calls and i == call))


def turn_bans(tokenizer: Tokenizer, calls: bool = False) -> frozenset[int]:
    """What a model's turn may not write: where it may make no call, the `<|tool_call|>` that opens one.
    A model taught commands (`--agent-skills`) otherwise answers small talk with a command that nobody
    runs, and an output it makes up; banned, it answers in words."""
    return frozenset() if calls else frozenset({tokenizer.special(CALL)})


def text_stops(tokenizer: Tokenizer) -> frozenset[int]:
    """Where a continuation of plain text (`nimllm generate`, /v1/completions) ends: the end of text."""
    return frozenset({tokenizer.eot_id})


# ---- the agent's mode ---------------------------------------------------------------------------

AGENT_MODE = "You can run shell commands to do what the user asks."


def agent_mode(messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """An agent's task as the model sees it, in its training episodes, in use, in what it learns and in
    the control set: after a system turn that names the mode. A chat has none, so what a chat teaches
    is learned in a context the agent's tasks do not share (10 unrelated chats had cost the agent 5 of
    its 18 solved tasks, bench/memory.py --agent)."""
    return [("system", AGENT_MODE), *messages]


# ---- fitting a conversation to the context -----------------------------------------------------

def context_budget(block_size: int, max_tokens: int) -> int:
    """Tokens of talk a prompt may hold: room for the answer, though a max_tokens as long as the
    context still leaves half of it for the talk (generation slides its window if the answer runs on)."""
    return max(block_size - max_tokens, block_size // 2)


def _tail(ids: list[int], n: int) -> list[int]:
    """A rendered message in at most n tokens: its role token and its last tokens."""
    return ids if len(ids) <= n else ids[:1] + ids[len(ids) - n + 1:]


def fit_context(turns: list[list[int]], budget: int, keep: int = 0) -> list[int]:
    """The most recent of the rendered messages `turns` (oldest first) that fit in `budget` tokens,
    joined. Older messages drop out whole; when even the newest alone is too long, it keeps its role
    token and its last tokens, so a talk that outgrows the context never stops the chat. The first
    `keep` messages stay (an agent's mode and request: its task means nothing without them), in at most
    half the budget (the last of them shortened to its tail if need be), and the most recent of the
    others fill the rest."""
    if keep and len(turns) > keep and sum(map(len, turns)) > budget:
        *whole, last = turns[:keep]
        first = [t for ids in whole for t in ids]
        first += _tail(last, budget // 2 - len(first))
        return first + fit_context(turns[keep:], budget - len(first))
    kept, used = [], 0
    for ids in reversed(turns):
        if used + len(ids) > budget:
            if not kept:
                kept.append(_tail(ids, budget))
            break
        kept.append(ids)
        used += len(ids)
    return [t for ids in reversed(kept) for t in ids]


def fit_prompt(tokenizer: Tokenizer, messages: list[tuple[str, str]], budget: int, keep: int = 0) -> list[int]:
    """The chat template of the most recent messages that fit in `budget` tokens (fit_context), then
    `<|assistant|>` for the model's turn."""
    turns = [tokenizer.render_conversation([message])[0] for message in messages]
    return fit_context(turns, budget - 1, keep) + [tokenizer.special("<|assistant|>")]   # -1: that last token


# ---- text as tokens arrive ----------------------------------------------------------------------

class TextStream:
    """Token ids to text as they arrive. A token can end inside a UTF-8 character (decoded so far as
    U+FFFD), so such pieces wait for the tokens that complete them."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def feed(self, token: int) -> str:
        """The text this token completes ("" while a character is cut)."""
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd"):
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        """What is still pending, at the end (an incomplete character as U+FFFD)."""
        text, self.pending = self.tokenizer.decode(self.pending) if self.pending else "", []
        return text


def decode_stream(tokenizer: Tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Text pieces as ids arrive (TextStream), never an empty one."""
    stream = TextStream(tokenizer)
    for token in ids:
        if piece := stream.feed(token):
            yield piece
    if tail := stream.flush():
        yield tail


# ---- reading a turn -----------------------------------------------------------------------------

class Turn(NamedTuple):
    """What one turn of the model means."""
    kind: str          # "call", "answer" or "malformed"
    text: str          # the command, the answer, or what was wrong
    raw: str = ""      # what the model wrote, all of it


class TurnReader:
    """A model's turn read as its tokens arrive: content text (UTF-8-safe) until a `<|tool_call|>` (where
    `calls`), then the call's tokens. `in_call`: the turn began inside a call (the prompt ended with
    `<|tool_call|>`, as where a call is forced)."""

    def __init__(self, tokenizer: Tokenizer, calls: bool = True, in_call: bool = False):
        self.tokenizer, self.calls = tokenizer, calls
        self.ids: list[int] = []                          # every token fed, the call's too
        self.call: list[int] | None = [] if in_call else None   # the tokens after <|tool_call|>, once opened
        self.text = TextStream(tokenizer)

    def feed(self, token: int) -> str:
        """The content to show for one more token: "" inside a call or while a character is cut."""
        self.ids.append(token)
        if self.call is not None:
            self.call.append(token)
            return ""
        if self.calls and token == self.tokenizer.special(CALL):
            self.call = []
            return ""
        return self.text.feed(token)

    def flush(self) -> str:
        """The content still pending, at the end."""
        return self.text.flush()

    def call_text(self) -> str | None:
        """The call as written, its special tokens let go, even if it never closed; None with no call."""
        return None if self.call is None else self.tokenizer.decode(
            [t for t in self.call if t not in self.tokenizer.special_ids.values()]).strip()

    def turn(self) -> Turn:
        """The turn read strictly: `<|tool_call|>command<|/tool_call|>` (content before it is let go),
        `answer<|end|>` (or the end of text), or anything else as malformed: other special tokens, an
        empty command or answer, or no closing token (the token limit came first)."""
        return self._turn()._replace(raw=self.tokenizer.decode(self.ids))

    def _turn(self) -> Turn:
        tok, specials = self.tokenizer, set(self.tokenizer.special_ids.values())
        if self.call is not None:
            body = self.call
            if not body or body[-1] != tok.special(CLOSE):
                return Turn("malformed", "a command with no end")
            if any(i in specials for i in body[:-1]):
                return Turn("malformed", "a special token inside a command")
            command = tok.decode(body[:-1]).strip()
            return Turn("call", command) if command else Turn("malformed", "an empty command")
        ids = self.ids
        if any(i in specials for i in ids[:-1]) or (ids and ids[-1] in specials
                                                   and ids[-1] not in (tok.special(END), tok.eot_id)):
            return Turn("malformed", "a stray special token")
        if not ids or ids[-1] not in (tok.special(END), tok.eot_id):
            return Turn("malformed", "no end before the token limit")
        answer = tok.decode(ids[:-1]).strip()
        return Turn("answer", answer) if answer else Turn("malformed", "an empty answer")


def read_turn(tokenizer: Tokenizer, ids: list[int]) -> Turn:
    """One whole turn's tokens, its closing token included, read by a TurnReader."""
    reader = TurnReader(tokenizer)
    for token in ids:
        reader.feed(token)
    return reader.turn()
