"""Conversations and memories in SQLite, in the model folder (`conversations.sqlite`).

Every call that writes is one transaction, committed before it returns: a message is on disk once
`add_message` returns, so a chat killed at any moment loses nothing it said. Several processes may
share one database (two chats on one model): SQLite serialises their writes, and the busy timeout makes
one wait for the other instead of failing.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from nimllm.config import UserError
from nimllm.fileio import process_alive

ROLES = ("system", "user", "assistant", "tool_call", "tool")   # tool_call: an assistant turn spent on a call
FEEDBACK = ("good", "bad", "fix")
SCHEMA_VERSION = 2   # PRAGMA user_version; a later schema bumps it and migrates older files in _create
SCHEMA = """
CREATE TABLE IF NOT EXISTS deltas (
    id INTEGER PRIMARY KEY, created REAL NOT NULL, file TEXT NOT NULL, n_weights INTEGER NOT NULL,
    seconds REAL NOT NULL, stats TEXT NOT NULL, forgotten REAL);
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, started REAL NOT NULL, ended REAL, pid INTEGER NOT NULL,
    title TEXT, learned_delta INTEGER REFERENCES deltas(id));
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL REFERENCES conversations(id), role TEXT NOT NULL,
    content TEXT NOT NULL, created REAL NOT NULL, feedback TEXT, fix TEXT, meta TEXT);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""
JSON_COLUMNS = ("meta", "stats")


@dataclass
class Conversation:
    id: int
    kind: str              # "chat", "agent", "server"...
    started: float
    ended: float | None
    pid: int               # the process having it: the one it was started in, or the one learning it
    title: str | None      # the start of the first user message
    learned_delta: int | None


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    created: float
    feedback: str | None   # "good", "bad" or "fix"
    fix: str | None        # the better answer, with "fix"
    meta: dict | None


@dataclass
class Delta:
    id: int
    created: float
    file: str              # relative to the model folder
    n_weights: int
    seconds: float
    stats: dict
    forgotten: float | None


def _unlearned(db: sqlite3.Connection, kinds: tuple[str, ...] | None) -> list[int]:
    rows = db.execute("""SELECT id, ended, pid, kind FROM conversations c WHERE learned_delta IS NULL
                         AND EXISTS (SELECT 1 FROM messages WHERE conversation_id = c.id AND role = 'user')
                         ORDER BY id""").fetchall()
    return [cid for cid, ended, pid, kind in rows if (kinds is None or kind in kinds)
            and ((pid == os.getpid() and ended is not None) or not process_alive(pid))]


def _calls_as_a_role(db: sqlite3.Connection) -> None:
    """Schema 1 stored a tool call as an assistant message with meta {"tool_call": true}, which every
    reader had to know; schema 2 gives it the role "tool_call" (the chat template's) and drops the flag."""
    rows = db.execute("SELECT id, meta FROM messages WHERE role = 'assistant' AND meta IS NOT NULL").fetchall()
    for message_id, meta in rows:
        meta = json.loads(meta)
        if isinstance(meta, dict) and meta.pop("tool_call", False):
            db.execute("UPDATE messages SET role = 'tool_call', meta = ? WHERE id = ?",
                       (json.dumps(meta) if meta else None, message_id))


BUSY_TIMEOUT = 30.0   # seconds a connection waits for another's lock


def write_ahead_log(db: sqlite3.Connection) -> None:
    """WAL mode, so readers never wait for a writer. Processes opening a new file at once (chats asked side
    by side) can have the switch refused at once, without the busy wait (SQLite's way out of a possible
    deadlock): it is asked again until BUSY_TIMEOUT."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()   # one connection per Store, shareable by a server's threads
        with self._errors():
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
            write_ahead_log(self.db)
            # NORMAL would already survive a killed process (a commit is in the WAL file once written),
            # but a power cut could take back the last few; FULL syncs at every commit, a few
            # milliseconds per message, nothing next to generating the answer.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
        self._create()

    def _create(self) -> None:
        with self._locked(write=True) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(f"{self.path} was written by a newer nimllm (schema {version}); upgrade nimllm")
            if version < SCHEMA_VERSION:   # a new file, or an older one: made current in this one transaction
                for statement in SCHEMA.split(";")[:-1]:
                    db.execute(statement)
                _calls_as_a_role(db)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def _errors(self):
        """SQLite's errors about the file itself, as one line naming it (cli prints UserErrors)."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            code = getattr(e, "sqlite_errorcode", 0) & 0xFF   # the primary code of an extended one
            if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise UserError(f"{self.path} is damaged ({e}); move it away to start a new conversation store") \
                    from None
            if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
                raise UserError(f"cannot use {self.path} ({e})") from None
            raise

    @contextmanager
    def _locked(self, write: bool = False):
        """The connection, one thread at a time; with `write`, the block is one committed transaction."""
        with self.lock, self._errors():
            if not write:
                yield self.db
                return
            # take the write lock up front: a second writer waits here (busy timeout), never halfway through
            self.db.execute("BEGIN IMMEDIATE")
            with self.db:   # COMMIT, or ROLLBACK on any exception
                yield self.db

    def _select(self, cls, table: str, where: str = "", args=()) -> list:
        names = [f.name for f in fields(cls)]
        with self._locked() as db:
            rows = db.execute(f"SELECT {', '.join(names)} FROM {table} {where}", args).fetchall()
        return [cls(*(json.loads(v) if n in JSON_COLUMNS and v is not None else v for n, v in zip(names, row)))
                for row in rows]

    # ---- conversations and messages ----

    def start_conversation(self, kind: str = "chat") -> int:
        with self._locked(write=True) as db:
            return db.execute("INSERT INTO conversations (kind, started, pid) VALUES (?, ?, ?)",
                              (kind, time.time(), os.getpid())).lastrowid

    def add_message(self, conversation_id: int, role: str, content: str, meta: dict | None = None) -> int:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        with self._locked(write=True) as db:
            message_id = db.execute(
                "INSERT INTO messages (conversation_id, role, content, created, meta) VALUES (?, ?, ?, ?, ?)",
                (conversation_id, role, content, time.time(), None if meta is None else json.dumps(meta))).lastrowid
            if role == "user":
                title = " ".join(content.split())[:60] or None   # one line; blank lines leave it to the next
                db.execute("UPDATE conversations SET title = ? WHERE id = ? AND title IS NULL",
                           (title, conversation_id))
        return message_id

    def set_feedback(self, message_id: int, feedback: str, fix: str | None = None) -> None:
        if feedback not in FEEDBACK or (feedback == "fix") != bool(fix):
            raise ValueError("feedback is good, bad, or fix with the better answer")
        with self._locked(write=True) as db:
            if not db.execute("UPDATE messages SET feedback = ?, fix = ? WHERE id = ?",
                              (feedback, fix, message_id)).rowcount:
                raise UserError(f"no message {message_id}")

    def end_conversation(self, conversation_id: int) -> None:
        with self._locked(write=True) as db:
            db.execute("UPDATE conversations SET ended = ? WHERE id = ? AND ended IS NULL",
                       (time.time(), conversation_id))

    def conversation(self, conversation_id: int) -> Conversation:
        found = self._select(Conversation, "conversations", "WHERE id = ?", (conversation_id,))
        if not found:
            raise UserError(f"no conversation {conversation_id}")
        return found[0]

    def conversations(self, kind: str | None = None) -> list[Conversation]:
        """Newest first."""
        return self._select(Conversation, "conversations", "WHERE ? IS NULL OR kind = ? ORDER BY id DESC",
                            (kind, kind))

    def messages(self, conversation_id: int) -> list[Message]:
        return self._select(Message, "messages", "WHERE conversation_id = ? ORDER BY id", (conversation_id,))

    def unlearned(self, kinds: tuple[str, ...] | None = None) -> list[int]:
        """Conversations (of these kinds; None: any) with something the user said, not learned yet, and
        left to learn: by a process that died (a killed chat, or one killed while learning), or ended by
        this one. Those another live process has, it learns itself (a chat learns its conversation as it
        ends). Oldest first."""
        with self._locked() as db:
            return _unlearned(db, kinds)

    def claim_unlearned(self, kinds: tuple[str, ...] | None = None) -> list[int]:
        """unlearned(kinds), each made this process's in the same transaction (the write lock is taken
        first), so that of several chats started together exactly one learns a killed chat's conversation.
        A claim dies with its process: a learner killed midway leaves the conversation to the next one."""
        with self._locked(write=True) as db:
            claimed = _unlearned(db, kinds)
            db.executemany("UPDATE conversations SET pid = ? WHERE id = ?", [(os.getpid(), cid) for cid in claimed])
        return claimed

    # ---- memories (weight deltas) ----

    def record_delta(self, conversation_ids: list[int], file: str, n_weights: int, seconds: float,
                     stats: dict) -> int:
        """The delta (its file already written) and the 'learned' marks of its conversations, together."""
        with self._locked(write=True) as db:
            delta_id = db.execute(
                "INSERT INTO deltas (created, file, n_weights, seconds, stats) VALUES (?, ?, ?, ?, ?)",
                (time.time(), file, n_weights, seconds, json.dumps(stats))).lastrowid
            db.executemany("UPDATE conversations SET learned_delta = ? WHERE id = ?",
                           [(delta_id, cid) for cid in conversation_ids])
        return delta_id

    def deltas(self, include_forgotten: bool = False, kinds: tuple[str, ...] | None = None) -> list[Delta]:
        """In the order they were learned; with kinds, only those learned from conversations of these kinds."""
        of_kinds = "" if kinds is None else \
            f"AND id IN (SELECT learned_delta FROM conversations WHERE kind IN ({', '.join('?' * len(kinds))}))"
        return self._select(Delta, "deltas", f"WHERE (? OR forgotten IS NULL) {of_kinds} ORDER BY id",
                            (include_forgotten, *(kinds or ())))

    def delta(self, delta_id: int) -> Delta:
        found = self._select(Delta, "deltas", "WHERE id = ?", (delta_id,))
        if not found:
            raise UserError(f"no memory {delta_id}; `nimllm memory list` shows them")
        return found[0]

    def forget_delta(self, delta_id: int) -> None:
        """Its conversations stay marked learned: a forgotten conversation is not learned again."""
        with self._locked(write=True) as db:
            if not db.execute("SELECT 1 FROM deltas WHERE id = ?", (delta_id,)).fetchone():
                raise UserError(f"no memory {delta_id}; `nimllm memory list` shows them")
            db.execute("UPDATE deltas SET forgotten = ? WHERE id = ? AND forgotten IS NULL", (time.time(), delta_id))

    def reset(self) -> None:
        """Forget every memory."""
        with self._locked(write=True) as db:
            db.execute("UPDATE deltas SET forgotten = ? WHERE forgotten IS NULL", (time.time(),))
