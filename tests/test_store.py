import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import REPO
from nimllm.config import UserError
from nimllm.store import Store


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "c.sqlite") as s:
        yield s


def test_messages_feedback_and_titles(store):
    cid = store.start_conversation()
    u = store.add_message(cid, "user", "my sister\nIlse lives in Tromso")
    a = store.add_message(cid, "assistant", "noted")
    store.set_feedback(a, "fix", "Ilse lives in Tromso.")
    msgs = store.messages(cid)
    assert [(m.id, m.role) for m in msgs] == [(u, "user"), (a, "assistant")]
    assert (msgs[1].feedback, msgs[1].fix) == ("fix", "Ilse lives in Tromso.")
    assert store.conversation(cid).title == "my sister Ilse lives in Tromso"
    second = store.start_conversation("agent")
    assert [c.id for c in store.conversations()] == [second, cid]
    assert [c.id for c in store.conversations("agent")] == [second]
    with pytest.raises(ValueError):
        store.set_feedback(a, "fix")
    with pytest.raises(ValueError):
        store.add_message(cid, "robot", "hi")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unlearned_waits_for_live_conversations(store, tmp_path):
    ended = store.start_conversation()
    store.add_message(ended, "user", "a")
    store.end_conversation(ended)
    live = store.start_conversation()            # ours, still going
    store.add_message(live, "user", "b")
    silent = store.start_conversation()
    store.add_message(silent, "assistant", "nobody spoke")
    store.end_conversation(silent)
    orphan_code = ("import sys; from nimllm.store import Store; s = Store(sys.argv[1]); "
                   "c = s.start_conversation(); s.add_message(c, 'user', 'then I was killed')")
    subprocess.run([sys.executable, "-c", orphan_code, str(store.path)], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    orphan = store.conversations()[0].id
    assert store.unlearned() == [ended, orphan]
    delta = store.record_delta([ended, orphan], "memory/d.safetensors", 10, 0.5, {"x": 1})
    assert store.unlearned() == []
    assert store.conversation(ended).learned_delta == delta and store.delta(delta).stats == {"x": 1}
    store.forget_delta(delta)
    assert store.deltas() == [] and store.deltas(include_forgotten=True)[0].forgotten
    assert store.unlearned() == []               # forgotten stays forgotten
    with pytest.raises(UserError, match="no memory 99"):
        store.delta(99)


WRITER = """
import sys
from nimllm.store import Store
s = Store(sys.argv[1]); c = s.start_conversation()
while True:
    print(s.add_message(c, "user", "x" * 200), flush=True)
"""


def test_sigkill_loses_no_committed_message(tmp_path):
    path = tmp_path / "c.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    said = [int(proc.stdout.readline()) for _ in range(50)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(path) as store:
        stored = {m.id for c in store.conversations() for m in store.messages(c.id)}
    assert set(said) <= stored


def test_two_writers_at_once(tmp_path):
    path = tmp_path / "c.sqlite"
    Store(path).close()

    def write(n):
        with Store(path) as s:
            cid = s.start_conversation()
            for i in range(n):
                s.add_message(cid, "user", str(i))

    threads = [threading.Thread(target=write, args=(100,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Store(path) as s:
        assert sorted(len(s.messages(c.id)) for c in s.conversations()) == [100, 100]


def test_damaged_database(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="damaged"):
        Store(path)
