"""What a model writes reaches the terminal harmless (nimllm/console.py's `printable`), through the faces
that show it: `nimllm generate` and `nimllm chat`, as real commands."""
import subprocess

import pytest
import torch

from conftest import run_cli
from nimllm.config import ModelConfig
from nimllm.model import GPT

pytestmark = pytest.mark.slow   # each runs a real command in a new process

NASTY = "\x1b]0;pwned\x07\x1b[2J\x1b[31m\x1b]52;c;cm0gLXJmIH4=\x1b\\\x9b6n\x85\x08\r\x00\x7f\u202e"
CONTROL = [chr(c) for c in (*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0))] + ["\u202e"]


@pytest.fixture(scope="module")
def escape_model(tmp_path_factory):
    """A model folder whose model writes nothing but the tokens of NASTY (escape sequences for the
    screen, the window title and the clipboard, C0 and C1 controls, a bidi override), in random order:
    the blocks add nothing and the tied output layer scores those tokens far above all others."""
    from nimllm.checkpoint import save_config, save_weights
    from nimllm.config import PRESETS, ModelFolder
    from nimllm.tokenizer import Tokenizer
    folder = ModelFolder(tmp_path_factory.mktemp("escape") / "model")
    tokenizer = Tokenizer.train([NASTY + " plain words " * 10] * 50, vocab_size=300)
    folder.root.mkdir()
    tokenizer.save(folder.tokenizer)
    cfg = ModelConfig(**{**PRESETS["tiny"].model.__dict__, "vocab_size": 320})
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_() if p.dim() > 1 else p.fill_(1.0)
        model.wte.weight.fill_(1.0)
        model.wte.weight[sorted(set(tokenizer.encode(NASTY)))] = 2.0
    save_config(folder, cfg, PRESETS["tiny"].train, "tiny", [])
    save_weights(folder, model, 0)
    return folder


def assert_no_control(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert [c for c in CONTROL if c in out.stdout] == []
    assert "\\x1b" in out.stdout and "\\x07" in out.stdout   # the model did write them: shown as text


def test_generate_prints_no_control_characters(escape_model, home):
    assert_no_control(run_cli("generate", "hello", "--model", escape_model.root, "--max-tokens", 60, "--seed", 0))


def test_chat_prints_no_control_characters(escape_model, home):
    out = run_cli("chat", "--model", escape_model.root, "--max-tokens", 60, "--seed", 0, input="hello?\n")
    assert_no_control(out)
