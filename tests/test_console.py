"""What a model writes reaches the terminal harmless (nimllm/console.py's `printable`), through the faces
that show it: `nimllm generate` and `nimllm chat`, as real commands."""
import subprocess

import pytest
from conftest import model_favouring, run_cli
from nimllm.config import ModelFolder

pytestmark = pytest.mark.slow   # each runs a real command in a new process

NASTY = "\x1b]0;pwned\x07\x1b[2J\x1b[31m\x1b]52;c;cm0gLXJmIH4=\x1b\\\x9b6n\x85\x08\r\x00\x7f\u202e"
CONTROL = [chr(c) for c in (*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0))] + ["\u202e"]


@pytest.fixture(scope="module")
def escape_model(tmp_path_factory):
    """A model folder whose model writes nothing but the tokens of NASTY (escape sequences for the
    screen, the window title and the clipboard, C0 and C1 controls, a bidi override), in random order:
    the tied output layer scores those tokens far above all others."""
    return ModelFolder(model_favouring(tmp_path_factory.mktemp("escape") / "model", NASTY + " plain words " * 10,
                                       lambda tok: {i: 2.0 for i in set(tok.encode(NASTY))}))


def assert_no_control(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert [c for c in CONTROL if c in out.stdout] == []
    assert "\\x1b" in out.stdout and "\\x07" in out.stdout   # the model did write them: shown as text


def test_generate_prints_no_control_characters(escape_model, home):
    assert_no_control(run_cli("generate", "hello", "--model", escape_model.root, "--max-tokens", 60, "--seed", 0))


def test_chat_prints_no_control_characters(escape_model, home):
    out = run_cli("chat", "--model", escape_model.root, "--max-tokens", 60, "--seed", 0, input="hello?\n")
    assert_no_control(out)
