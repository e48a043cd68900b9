import os
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import REPO

from nimllm.config import UserError
from nimllm.store import SCHEMA_VERSION, Store

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "c.sqlite") as s:
        yield s


def test_messages_feedback_and_titles(store):
    cid = store.start_conversation()
    store.add_message(cid, "system", "be brief")
    u = store.add_message(cid, "user", "my sister\nIlse lives in Tromso " + "and works on ships " * 5)
    a = store.add_message(cid, "assistant", "noted", meta={"tokens": 2})
    store.add_message(cid, "user", "a later question")
    store.set_feedback(a, "fix", "Ilse lives in Tromso.")
    store.set_feedback(u, "good")
    msgs = store.messages(cid)
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1].id == u and msgs[2].id == a and msgs[0].meta is None and msgs[2].meta == {"tokens": 2}
    assert (msgs[2].feedback, msgs[2].fix) == ("fix", "Ilse lives in Tromso.")
    assert (msgs[1].feedback, msgs[1].fix) == ("good", None)
    title = store.conversation(cid).title
    assert title.startswith("my sister Ilse lives in Tromso and") and len(title) == 60 and "\n" not in title
    second = store.start_conversation("agent")
    assert store.conversation(second).title is None and store.conversation(second).pid == os.getpid()
    assert [c.id for c in store.conversations()] == [second, cid]
    assert [c.id for c in store.conversations("agent")] == [second]
    with pytest.raises(ValueError):
        store.set_feedback(a, "fix")
    with pytest.raises(ValueError):
        store.set_feedback(a, "meh")
    with pytest.raises(ValueError):
        store.add_message(cid, "robot", "hi")
    with pytest.raises(UserError, match="no message 99"):
        store.set_feedback(99, "bad")
    with pytest.raises(UserError, match="no conversation 99"):
        store.conversation(99)


def test_wal_and_schema_version(tmp_path):
    path = tmp_path / "c.sqlite"
    with Store(path) as store:
        pragmas = [store.db.execute(f"PRAGMA {name}").fetchone()[0]
                   for name in ("journal_mode", "synchronous", "foreign_keys", "user_version")]
        assert pragmas == ["wal", 2, 1, SCHEMA_VERSION]     # synchronous 2 is FULL
        store.start_conversation()
    with Store(path) as store:      # opening again keeps what is there
        assert len(store.conversations()) == 1
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(UserError, match="newer nimllm"):
        Store(path)


ORPHAN = """
import sys
from nimllm.store import Store
s = Store(sys.argv[1]); c = s.start_conversation(); s.add_message(c, "user", "then I was killed")
"""


def test_unlearned_deltas_and_forgetting(store):
    ended = store.start_conversation()
    store.add_message(ended, "user", "a")
    store.end_conversation(ended)
    live = store.start_conversation()            # ours, still going
    store.add_message(live, "user", "b")
    silent = store.start_conversation()          # nothing the user said: nothing to learn
    store.add_message(silent, "assistant", "nobody spoke")
    store.end_conversation(silent)
    subprocess.run([sys.executable, "-c", ORPHAN, str(store.path)], check=True, env=ENV)
    orphan = store.conversations()[0].id         # its process has exited without ending it
    assert store.conversation(orphan).ended is None
    assert store.unlearned() == [ended, orphan]

    first = store.record_delta([ended, orphan], "memory/d1.safetensors", 10, 0.5, {"loss": [2.0, 1.5]})
    assert store.unlearned() == []
    assert store.conversation(ended).learned_delta == first == store.conversation(orphan).learned_delta
    assert store.delta(first).stats == {"loss": [2.0, 1.5]} and store.delta(first).file == "memory/d1.safetensors"
    store.end_conversation(live)
    second = store.record_delta([live], "memory/d2.safetensors", 20, 0.7, {})
    assert [d.id for d in store.deltas()] == [first, second]

    store.forget_delta(first)
    assert [d.id for d in store.deltas()] == [second]
    assert [d.forgotten is not None for d in store.deltas(include_forgotten=True)] == [True, False]
    assert store.unlearned() == []               # forgotten stays forgotten: not learned again
    store.reset()
    assert store.deltas() == [] and len(store.deltas(include_forgotten=True)) == 2
    with pytest.raises(UserError, match="no memory 99"):
        store.delta(99)
    with pytest.raises(UserError, match="no memory 99"):
        store.forget_delta(99)


def test_record_delta_is_all_or_nothing(store):
    cid = store.start_conversation()
    store.add_message(cid, "user", "a")
    store.end_conversation(cid)
    with pytest.raises(sqlite3.Error):           # fails after the delta row and the first mark went in
        store.record_delta([cid, [1]], "memory/d.safetensors", 1, 0.1, {})
    assert store.deltas(include_forgotten=True) == [] and store.unlearned() == [cid]


WRITER = """
import sys
from nimllm.store import Store
s = Store(sys.argv[1]); c = s.start_conversation()
print(c, flush=True); sys.stdin.readline()     # ready; writes when the test says go
for i in range(int(sys.argv[2])):
    print(s.add_message(c, "user", "x" * 200), flush=True)
"""


def writer(path, n):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    proc.stdout.readline()
    return proc


def go(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()


def go_together(procs):
    """Tell every process to go, then wait for each to end well."""
    for proc in procs:
        go(proc)
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err


def test_sigkill_loses_no_committed_message(tmp_path):
    path = tmp_path / "c.sqlite"
    proc = writer(path, 1_000_000)
    go(proc)
    said = [int(proc.stdout.readline()) for _ in range(50)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(path) as store:
        stored = {m.id for c in store.conversations() for m in store.messages(c.id)}
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert set(said) <= stored
        assert store.unlearned() == [c.id for c in store.conversations()]   # its owner is dead


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "c.sqlite"       # not there yet: both create it
    go_together([writer(path, 200) for _ in range(2)])
    with Store(path) as store:
        assert sorted(len(store.messages(c.id)) for c in store.conversations()) == [200, 200]


OPENER = """
import sys
from nimllm.store import Store
print("ready", flush=True); sys.stdin.readline()   # opens the store when the test says go
s = Store(sys.argv[1]); s.add_message(s.start_conversation(), "user", "hi")
"""


@pytest.mark.slow
def test_processes_opening_a_new_store_at_once_all_get_it(tmp_path):
    """Chats asked side by side in a folder without a store all create it at once: SQLite may refuse the
    switch to WAL without waiting, which ended one such chat in the memory bench."""
    for round in range(6):
        path = tmp_path / f"c{round}.sqlite"
        procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                 for _ in range(8)]
        assert all(proc.stdout.readline() == "ready\n" for proc in procs)
        go_together(procs)
        with Store(path) as store:
            assert len(store.conversations()) == 8


def test_one_store_shared_by_threads(tmp_path):
    def chat(s, n):
        cid = s.start_conversation("server")
        for i in range(n):
            s.add_message(cid, "user", str(i))
            s.messages(cid)

    # a server's thread pool on one Store, and a second Store on the same file beside it
    with Store(tmp_path / "c.sqlite") as store, Store(tmp_path / "c.sqlite") as other, \
            ThreadPoolExecutor(6) as pool:
        for job in [pool.submit(chat, s, 50) for s in [store] * 4 + [other] * 2]:
            job.result()     # raises what the thread raised
        assert [len(store.messages(c.id)) for c in store.conversations("server")] == [50] * 6
        assert [m.content for m in store.messages(store.conversations()[0].id)] == [str(i) for i in range(50)]


def test_damaged_database(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match=r"c\.sqlite is damaged"):
        Store(path)

    path = tmp_path / "d.sqlite"       # a good header, damage further in: found when it is read
    with Store(path) as store:
        cid = store.start_conversation()
        for _ in range(300):
            store.add_message(cid, "user", "x" * 500)
    data = bytearray(path.read_bytes())
    page = 4096
    data[5 * page:-page] = b"\xab" * (len(data) - 6 * page)
    path.write_bytes(bytes(data))
    with Store(path) as store, pytest.raises(UserError, match=r"d\.sqlite is damaged"):
        store.messages(cid)


def test_folder_that_does_not_exist(tmp_path):
    with pytest.raises(UserError, match="cannot use"):
        Store(tmp_path / "missing" / "c.sqlite")


# schema 1 (user_version 1), as nimllm wrote conversations.sqlite before tool calls had a role of their own
SCHEMA_1 = """
CREATE TABLE deltas (
    id INTEGER PRIMARY KEY, created REAL NOT NULL, file TEXT NOT NULL, n_weights INTEGER NOT NULL,
    seconds REAL NOT NULL, stats TEXT NOT NULL, forgotten REAL);
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, started REAL NOT NULL, ended REAL, pid INTEGER NOT NULL,
    title TEXT, learned_delta INTEGER REFERENCES deltas(id));
CREATE TABLE messages (
    id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL REFERENCES conversations(id), role TEXT NOT NULL,
    content TEXT NOT NULL, created REAL NOT NULL, feedback TEXT, fix TEXT, meta TEXT);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
PRAGMA user_version = 1;
"""
OLD_TASK = [   # an agent's task: a refused command, one edited by the user, the answer, and a malformed turn
    ("user", "count the files", None, None, '{"agent": true}'),
    ("assistant", "rm -rf /", "bad", None, '{"tool_call": true}'),
    ("tool", "[refused: deletes everything]", None, None, '{"refused": "deletes everything"}'),
    ("assistant", "ls", "fix", "ls | wc -l", '{"tool_call": true}'),
    ("tool", "[exit 0]\n2", None, None, '{"exit_code": 0, "status": "exit 0"}'),
    ("assistant", "There are 2.", "good", None, None),
    ("assistant", "<|user|>", "bad", None, '{"malformed": "a stray special token"}'),
]


def old_store(path):
    """A schema 1 file, built by hand with sqlite3."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.execute("INSERT INTO conversations (id, kind, started, ended, pid) VALUES (1, 'agent', 1.0, 2.0, 1)")
    db.executemany("INSERT INTO messages (conversation_id, role, content, created, feedback, fix, meta) "
                   "VALUES (1, ?, ?, 1.5, ?, ?, ?)", OLD_TASK)
    db.commit()
    db.close()


def test_a_schema_1_file_gets_tool_calls_as_their_own_role_when_opened(tmp_path):
    from nimllm.lessons import conversation_messages
    path = tmp_path / "conversations.sqlite"
    old_store(path)
    for _ in range(2):   # the first open migrates; the second finds nothing left to do
        with Store(path) as store:
            messages = store.messages(1)
            assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert [(m.role, m.content, m.feedback, m.meta) for m in messages] == [
            ("user", "count the files", None, {"agent": True}),
            ("tool_call", "rm -rf /", "bad", None),
            ("tool", "[refused: deletes everything]", None, {"refused": "deletes everything"}),
            ("tool_call", "ls", "fix", None),
            ("tool", "[exit 0]\n2", None, {"exit_code": 0, "status": "exit 0"}),
            ("assistant", "There are 2.", "good", None),
            ("assistant", "<|user|>", "bad", {"malformed": "a stray special token"})]
        assert conversation_messages(messages) == [("user", "count the files"), ("tool_call", "ls | wc -l"),
                                                   ("tool", "[exit 0]\n2"), ("assistant", "There are 2.")]


def test_a_migration_that_fails_midway_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    import nimllm.store
    path = tmp_path / "conversations.sqlite"
    old_store(path)
    real = nimllm.store._calls_as_a_role

    def failing(db):
        real(db)   # every row changed, then the disk goes
        raise OSError("the disk went away")

    monkeypatch.setattr(nimllm.store, "_calls_as_a_role", failing)
    with pytest.raises(OSError, match="disk went away"):
        Store(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert [r for (r,) in db.execute("SELECT role FROM messages ORDER BY id")] == [r for r, *_ in OLD_TASK]
    db.close()
    monkeypatch.undo()
    with Store(path) as store:
        assert [m.role for m in store.messages(1)].count("tool_call") == 2


def test_a_tool_call_is_a_role(store):
    c = store.start_conversation(kind="agent")
    store.add_message(c, "tool_call", "ls")
    assert [(m.role, m.meta) for m in store.messages(c)] == [("tool_call", None)]
    with pytest.raises(ValueError):
        store.add_message(c, "tool_calls", "ls")
