"""The conversations `nimllm serve --remember` keeps: each one (`Talk`) and all of them (`Talks`).

An OpenAI client sends the whole conversation with every request and the server has no sessions,
so a conversation is known by its messages; the server stores it as they arrive (nimllm/store.py)
and its engine learns it once it goes quiet.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from nimllm.api import ApiError
from nimllm.store import Store


@dataclass(eq=False)
class Talk:
    """A conversation the server keeps (--remember), known by its messages."""
    messages: list[tuple[str, str]]   # as the client will send them back (template pairs)
    ids: list[int]                    # their stored ids
    conversation: int | None = None   # in the store; None once learned: a continuation starts a new one
    last: float = 0.0                 # when it last changed
    busy: int = 0                     # replies being written


class Talks:
    """Server conversations, stored as their messages arrive. A request continues the known conversation
    whose messages are the longest prefix of its own, else it starts one; after `quiet_after` seconds
    without a request a conversation is ended and handed to the engine to learn. As in the chat, what is
    said after that is a new conversation in the store, with the old one still in the model's context."""

    def __init__(self, store: Store, quiet_after: float, keep: int = 1000):
        self.store, self.quiet_after, self.keep = store, quiet_after, keep
        self.talks: list[Talk] = []
        self.lock = threading.Lock()

    def begin(self, messages: list[tuple[str, str]]) -> Talk:
        with self.lock:
            talk = max((t for t in self.talks if not t.busy and len(t.messages) < len(messages)
                        and messages[:len(t.messages)] == t.messages), key=lambda t: len(t.messages), default=None)
            if talk is None:
                talk = Talk([], [])
                self.talks.append(talk)
                self._forget_oldest()
            if talk.conversation is None:
                talk.conversation = self.store.start_conversation(kind="server")
            for role, content in messages[len(talk.messages):]:
                talk.ids.append(self._store(talk.conversation, role, content))
            talk.messages = list(messages)
            talk.busy += 1
            talk.last = time.time()
            return talk

    def end(self, talk: Talk, reply: tuple[str, str] | None) -> None:
        """A reply was written (None: the client left or it failed)."""
        with self.lock:
            if reply is not None:
                talk.ids.append(self._store(talk.conversation, *reply))
                talk.messages.append(reply)
            talk.busy -= 1
            talk.last = time.time()

    def quiet(self) -> list[Talk]:
        now = time.time()
        with self.lock:
            return [t for t in self.talks if t.conversation is not None and not t.busy
                    and now - t.last >= self.quiet_after]

    def close(self, talk: Talk) -> int:
        """End a conversation in the store; its id, to learn."""
        with self.lock:
            conversation, talk.conversation = talk.conversation, None
        self.store.end_conversation(conversation)
        return conversation

    def close_all(self) -> int:
        open_talks = [t for t in self.talks if t.conversation is not None]
        for talk in open_talks:
            self.close(talk)
        return len(open_talks)

    def feedback(self, messages: list[tuple[str, str]], feedback: str, fix: str | None) -> int:
        """Rate the last answer of the conversation with exactly these messages; its message id."""
        with self.lock:
            talk = next((t for t in self.talks if t.messages == messages), None)
            if talk is None or messages[-1][0] not in ("assistant", "tool_call"):
                raise ApiError(404, "no answer of a conversation this server keeps ends these messages "
                                    "(is it running with --remember?)")
            if talk.conversation is None:
                raise ApiError(409, "this conversation has been learned already; `nimllm memory forget` takes "
                                    "a memory back")
            self.store.set_feedback(talk.ids[-1], feedback, fix)
            if fix:   # the client goes on from the better answer: that is what it will send back
                talk.messages[-1] = (messages[-1][0], fix)
            return talk.ids[-1]

    def _store(self, conversation: int, role: str, content: str) -> int:
        return self.store.add_message(conversation, role, content)   # a tool call as the agent stores its commands

    def _forget_oldest(self) -> None:
        if len(self.talks) > self.keep:
            learned = [t for t in self.talks if t.conversation is None and not t.busy]
            if learned:
                self.talks.remove(learned[0])
