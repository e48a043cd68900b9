"""The chat REPL: piped sessions of the real command, a session in-process with a scripted model, and
the context window and input reading without any model."""
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli

from nimllm.chat import read_message, run_chat
from nimllm.config import ModelFolder
from nimllm.store import Store
from nimllm.tokenizer import Tokenizer
from nimllm.turns import Sampling


@pytest.fixture
def folder(tiny_model, tmp_path, home) -> ModelFolder:
    """A copy of the session's tiny model for each test, with a conversation store of its own."""
    shutil.copytree(tiny_model, tmp_path / "model")
    return ModelFolder(tmp_path / "model")


def chat(folder: ModelFolder, text: str, max_tokens: int = 8) -> str:
    out = run_cli("chat", "--model", folder.root, "--max-tokens", max_tokens, "--seed", "0", input=text)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stdout


def stored(folder: ModelFolder) -> list[list]:
    """Every conversation's messages, oldest conversation first."""
    with Store(folder.store) as store:
        return [store.messages(c.id) for c in reversed(store.conversations())]


@pytest.mark.slow
def test_a_piped_session_is_stored_and_learned(folder):
    out = chat(folder, "Ilse lives in Tromso\n/quit\n")
    assert "you> Ilse lives in Tromso\nnimllm> " in out and "you> /quit\n" in out
    assert "remembering this conversation... updated " in out
    [messages] = stored(folder)
    assert [m.role for m in messages] == ["user", "assistant"] and messages[0].content == "Ilse lives in Tromso"
    with Store(folder.store) as store:
        [conversation] = store.conversations()
    assert conversation.ended is not None and conversation.learned_delta is not None


@pytest.mark.slow
def test_missing_model_is_a_one_line_error(tmp_path):
    out = run_cli("--chat", "--model", tmp_path / "nothing", input="hello\n")
    assert out.returncode == 1 and out.stderr.startswith("nimllm: error: no model in") and "Traceback" not in out.stderr


@pytest.mark.slow
def test_feedback_commands_and_multi_line_input(folder):
    out = chat(folder, "/good\none\\\ntwo\n/good\nsecond\n/bad\nthird\n/fix a better\\\nanswer\n/help\n/frobnicate\n"
                       '"""\nblock one\n\nblock two\n"""\n')   # no /quit: the end of input quits
    assert "no answer to rate yet" in out
    assert "...> " in out and "/remember" in out and "/fix" in out         # continuation prompt, the help
    assert "unknown command /frobnicate; /help lists the commands" in out
    assert "remembering this conversation..." in out
    [messages] = stored(folder)
    assert [(m.role, m.content) for m in messages if m.role == "user"] == [
        ("user", "one\ntwo"), ("user", "second"), ("user", "third"), ("user", "block one\n\nblock two")]
    assert [(m.feedback, m.fix) for m in messages if m.role == "assistant"] == [
        ("good", None), ("bad", None), ("fix", "a better\nanswer"), (None, None)]


@pytest.mark.slow
def test_a_talk_longer_than_the_context(folder):
    lines = [f"line {i}: " + "the quick brown fox jumps over the lazy dog " * 4 for i in range(12)]
    lines.insert(5, "one enormous message " * 100)
    out = chat(folder, "\n".join(lines) + "\n/quit\n", max_tokens=60)   # the tiny preset's context is 128
    assert out.count("nimllm> ") == 13
    [messages] = stored(folder)
    assert [m.role for m in messages] == ["user", "assistant"] * 13


@pytest.mark.slow
def test_remember_learns_and_starts_a_new_conversation(folder):
    out = chat(folder, "/remember\nOrla has a cat\n/remember\nthe cat is called Miso\n/stats\n/quit\n")
    assert "nothing to remember yet" in out
    assert out.count("remembering this conversation... updated ") == 2
    assert "memories kept: 1" in out                                      # /stats, between the two
    empty, first, second = stored(folder)
    assert empty == [] and [m.content for m in first if m.role == "user"] == ["Orla has a cat"]
    assert [m.content for m in second if m.role == "user"] == ["the cat is called Miso"]
    with Store(folder.store) as store:
        assert [c.learned_delta is not None for c in reversed(store.conversations())] == [False, True, True]


@pytest.mark.slow
def test_context_flows_on_after_remember_and_ctrl_c_keeps_a_partial_answer(folder, monkeypatch):
    tokenizer = Tokenizer.load(folder.tokenizer)
    prompts = []

    def interrupted_generate(model, prompt, *args, **kwargs):
        prompts.append(tokenizer.decode(prompt))
        yield from tokenizer.encode("so far")
        raise KeyboardInterrupt   # Ctrl-C while the model writes

    monkeypatch.setattr("nimllm.generate.generate", interrupted_generate)
    stdout = io.StringIO()
    sampling = Sampling(max_tokens=20, temperature=0.7, top_k=50, top_p=0.95)
    code = run_chat(folder, "cpu", sampling, stdin=io.StringIO("hello\n/remember\nagain\n"), stdout=stdout)
    assert code == 0
    assert "nimllm> so far [stopped]\n" in stdout.getvalue()
    assert prompts[1] == "<|user|>hello<|end|><|assistant|>so far<|end|><|user|>again<|end|><|assistant|>"
    first, second = stored(folder)
    assert [(m.role, m.content) for m in first] == [("user", "hello"), ("assistant", "so far")]
    assert [(m.role, m.content) for m in second] == [("user", "again"), ("assistant", "so far")]


def test_read_message_joins_continued_lines_and_blocks():
    def reader(*lines):
        queue = iter(lines)
        return lambda prompt: next(queue, None)
    assert read_message(reader("plain", "next")) == "plain"
    assert read_message(reader("a\\", "b\\", "c", "next")) == "a\nb\nc"
    assert read_message(reader('"""', "x", "", "y\\", '"""', "next")) == "x\n\ny\\"
    assert read_message(reader()) is None


def kill_chat_when(folder: ModelFolder, text: str, ready) -> None:
    """Start `nimllm chat` on piped input and SIGKILL it once ready(stdout so far) is true."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nimllm.cli", "chat", "--model", str(folder.root), "--max-tokens",
                             "4"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    proc.stdin.write(text)
    proc.stdin.flush()
    seen = ""
    while not ready(seen):
        seen += proc.stdout.read(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_mid_conversation_loses_nothing_and_one_of_two_chats_started_next_learns_it(folder):
    """A chat killed mid-conversation has stored what was said; the next chat learns it, and of two chats
    started together exactly one does."""
    kill_chat_when(folder, "the lighthouse is called Vess\n", lambda out: out.count("you> ") >= 2)
    [messages] = stored(folder)
    assert [m.content for m in messages][:1] == ["the lighthouse is called Vess"] and len(messages) == 2
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    chats = [subprocess.Popen([sys.executable, "-m", "nimllm.cli", "chat", "--model", str(folder.root), "--max-tokens",
                               "4"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [proc.communicate("/quit\n", timeout=120) for proc in chats]
    assert [proc.returncode for proc in chats] == [0, 0] and not any(err for _, err in outs), outs
    assert sum(out.count("remembering an earlier conversation") for out, _ in outs) == 1
    [learner] = [out for out, _ in outs if "remembering an earlier conversation" in out]
    assert "updated" in learner
    with Store(folder.store) as store:
        assert store.unlearned() == []
        [delta] = store.deltas()
        [learned] = [c for c in store.conversations() if c.learned_delta is not None]
    assert learned.learned_delta == delta.id and learned.title == "the lighthouse is called Vess"


@pytest.mark.slow
def test_killed_mid_update_keeps_the_weights_and_learns_again(folder):
    from nimllm.memory import Memory
    chat(folder, "my first car was a Volvo\n/quit\n")     # one memory already there
    before = [p.detach().clone() for p in Memory(folder, "cpu").model.parameters()]
    kill_chat_when(folder, "my second car was a Saab\n/quit\n", lambda out: "remembering this conversation..." in out)
    time.sleep(0.1)
    after = [p.detach().clone() for p in Memory(folder, "cpu").model.parameters()]
    with Store(folder.store) as store:
        learned = len(store.deltas())
    if learned == 1:    # killed before the delta was recorded: the weights are exactly the old ones
        assert all(a.equal(b) for a, b in zip(before, after))
        assert "remembering an earlier conversation" in chat(folder, "/quit\n")
    with Store(folder.store) as store:
        assert store.unlearned() == [] and len(store.deltas()) == 2
        assert [m.content for m in store.messages(store.conversations()[-2].id)][0] == "my second car was a Saab"


@pytest.mark.slow
def test_memory_commands(folder):
    chat(folder, "the boat is called Blue Heron\n/remember\nthe cat is called Miso\n/quit\n")   # two memories
    listing = run_cli("memory", "list", "--model", folder.root)
    assert listing.returncode == 0 and "Blue Heron" in listing.stdout and "Miso" in listing.stdout
    shown = run_cli("memory", "show", "1", "--model", folder.root)
    assert "user: the boat is called Blue Heron" in shown.stdout and "weights" in shown.stdout
    stats = run_cli("memory", "stats", "--model", folder.root)
    assert "memories kept: 2" in stats.stdout and (folder.root / "memory.png").exists()
    assert "control answers kept: " in stats.stdout and "/40 (" in stats.stdout
    assert "forgot 1 memory" in run_cli("memory", "forget", "1", "--model", folder.root).stdout
    assert "memories kept: 1" in run_cli("memory", "stats", "--model", folder.root).stdout
    assert "forgot 1 memor" in run_cli("memory", "reset", "--model", folder.root).stdout
    missing = run_cli("memory", "show", "99", "--model", folder.root)
    assert missing.returncode == 1 and "no memory 99" in missing.stderr and "Traceback" not in missing.stderr



@pytest.mark.slow
def test_a_chat_answers_in_words_where_its_model_would_open_a_tool_call(calling_model, home):
    """A chat runs no command: a model taught commands would answer small talk with a call (and an
    output it makes up); banned, the reply is the model's words, not an empty turn or a call."""
    out = run_cli("chat", "--model", calling_model, "--max-tokens", 12, "--temperature", 0, input="tell me a joke\n")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    reply = out.stdout.split("nimllm> ", 1)[1].split("\n", 1)[0]
    assert "plain" in reply or "words" in reply, out.stdout
    assert "tool_call" not in out.stdout


@pytest.mark.slow
def test_the_update_warms_up_once_a_message_states_something_and_a_chat_of_questions_never_does(folder, monkeypatch):
    """Where a warm-up pays (a GPU, faked here), it starts after the reply to the first message with
    something to learn, once, and the update waits for it; a chat of questions never runs it."""
    from nimllm.memory import Memory
    events = []
    monkeypatch.setattr(Memory, "needs_warm_up", property(lambda self: True))
    real_warm_up, real_update = Memory.warm_up, Memory._update
    monkeypatch.setattr(Memory, "warm_up", lambda self: (time.sleep(0.5), events.append("warm up"),
                                                         real_warm_up(self))[-1])
    monkeypatch.setattr(Memory, "_update", lambda self, *a, **k: (events.append("update"), real_update(self, *a, **k))[-1])
    sampling = Sampling(max_tokens=4, temperature=0.0, top_k=None, top_p=None)

    def talk(text: str) -> str:
        stdout = io.StringIO()
        assert run_chat(folder, "cpu", sampling, stdin=io.StringIO(text), stdout=stdout) == 0
        return stdout.getvalue()

    out = talk("What is Ilse's boat called?\nhello\n")
    assert events == [] and "nothing to remember" in out
    out = talk("hello\nIlse's boat is called the Gull.\nMy dog is called Rex.\n")
    assert events == ["warm up", "update"] and "remembering this conversation... updated " in out
