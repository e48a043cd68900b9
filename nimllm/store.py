"""Conversations and memories in SQLite, in the model folder (`conversations.sqlite`).

Every call that writes commits before it returns, in WAL mode with full sync: a message is on disk
once `add_message` returns, so a chat killed at any moment loses nothing it said. Several processes
may share one database (two chats on one model); SQLite serialises their writes and a busy timeout
makes one wait for the other instead of failing.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nimllm.config import UserError

ROLES = ("system", "user", "assistant", "tool")
FEEDBACK = ("good", "bad", "fix")
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


@dataclass
class Conversation:
    id: int
    kind: str
    started: float
    ended: float | None
    pid: int
    title: str | None
    learned_delta: int | None


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    created: float
    feedback: str | None
    fix: str | None
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


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process: alive
        return True
    return True


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()   # one connection, shareable by a server's threads
        try:
            self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")   # a committed message survives a power cut too
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is damaged ({e}); move it away to start a new conversation store") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, sql: str, args=()) -> int:
        with self.lock:
            return self.db.execute(sql, args).lastrowid

    def _read(self, sql: str, args=()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    # ---- conversations and messages ----

    def start_conversation(self, kind: str = "chat") -> int:
        return self._write("INSERT INTO conversations (kind, started, pid) VALUES (?, ?, ?)",
                           (kind, time.time(), os.getpid()))

    def add_message(self, conversation_id: int, role: str, content: str, meta: dict | None = None) -> int:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                message_id = self.db.execute(
                    "INSERT INTO messages (conversation_id, role, content, created, meta) VALUES (?, ?, ?, ?, ?)",
                    (conversation_id, role, content, time.time(), json.dumps(meta) if meta else None)).lastrowid
                if role == "user":
                    title = " ".join(content.split())[:60]
                    self.db.execute("UPDATE conversations SET title = ? WHERE id = ? AND title IS NULL",
                                    (title, conversation_id))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return message_id

    def set_feedback(self, message_id: int, feedback: str, fix: str | None = None) -> None:
        if feedback not in FEEDBACK or (feedback == "fix") != bool(fix):
            raise ValueError("feedback is good, bad, or fix with the better answer")
        self._write("UPDATE messages SET feedback = ?, fix = ? WHERE id = ?", (feedback, fix, message_id))

    def end_conversation(self, conversation_id: int) -> None:
        self._write("UPDATE conversations SET ended = ? WHERE id = ? AND ended IS NULL", (time.time(), conversation_id))

    def conversation(self, conversation_id: int) -> Conversation:
        rows = self._read("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        if not rows:
            raise UserError(f"no conversation {conversation_id}")
        return Conversation(*rows[0])

    def conversations(self, kind: str | None = None) -> list[Conversation]:
        rows = self._read("SELECT * FROM conversations WHERE ? IS NULL OR kind = ? ORDER BY id DESC", (kind, kind))
        return [Conversation(*r) for r in rows]

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self._read("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        return [Message(*r[:7], json.loads(r[7]) if r[7] else None) for r in rows]

    def unlearned(self) -> list[int]:
        """Conversations with something the user said, not learned yet, and over: ended, or left by
        a process that died (a killed chat). Conversations live processes are still having wait."""
        rows = self._read("""SELECT c.id, c.ended, c.pid FROM conversations c WHERE c.learned_delta IS NULL
                             AND EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.role = 'user')
                             ORDER BY c.id""")
        return [cid for cid, ended, pid in rows if ended is not None or not process_alive(pid)]

    # ---- memories (weight deltas) ----

    def record_delta(self, conversation_ids: list[int], file: str, n_weights: int, seconds: float,
                     stats: dict) -> int:
        """The delta and the 'learned' marks of its conversations, in one transaction."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                delta_id = self.db.execute(
                    "INSERT INTO deltas (created, file, n_weights, seconds, stats) VALUES (?, ?, ?, ?, ?)",
                    (time.time(), file, n_weights, seconds, json.dumps(stats))).lastrowid
                self.db.executemany("UPDATE conversations SET learned_delta = ? WHERE id = ?",
                                    [(delta_id, cid) for cid in conversation_ids])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return delta_id

    def deltas(self, include_forgotten: bool = False) -> list[Delta]:
        rows = self._read("SELECT * FROM deltas WHERE ? OR forgotten IS NULL ORDER BY id", (include_forgotten,))
        return [Delta(*r[:5], json.loads(r[5]), r[6]) for r in rows]

    def delta(self, delta_id: int) -> Delta:
        found = [d for d in self.deltas(include_forgotten=True) if d.id == delta_id]
        if not found:
            raise UserError(f"no memory {delta_id}; `nimllm memory list` shows them")
        return found[0]

    def forget_delta(self, delta_id: int) -> None:
        """Its conversations stay marked learned: a forgotten conversation is not learned again."""
        self._write("UPDATE deltas SET forgotten = ? WHERE id = ? AND forgotten IS NULL", (time.time(), delta_id))

    def reset(self) -> None:
        self._write("UPDATE deltas SET forgotten = ? WHERE forgotten IS NULL", (time.time(),))
