import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nimllm.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def real_text(n_bytes: int) -> str:
    """Real English text: the start of tinyshakespeare from ../shared (or Python's own docs if absent)."""
    if SHAKESPEARE.exists():
        return SHAKESPEARE.read_text()[:n_bytes]
    import sysconfig
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return "".join(p.read_text() for p in sorted(stdlib.glob("*.py")))[:n_bytes]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(real_text(200_000))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty NIMLLM_HOME for this test, for in-process calls and subprocesses alike."""
    home = tmp_path / "home"
    monkeypatch.setenv("NIMLLM_HOME", str(home))
    return home


def run_cli(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """`nimllm ARGS` in a real subprocess, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "nimllm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO, **kwargs)


def popen_cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "nimllm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


# the tiny preset's context (128 tokens, which the chat tests fill) at half its depth and width: a few steps
# learn as little either way, and a chat's update takes a third of the time on 2 CPU cores
SMALL_MODEL = {"n_layer": 2, "n_embd": 64, "n_head": 4}
SMALL_SHAPE = ("--n-layer", 2, "--n-embd", 64, "--n-head", 4)   # the same, as `nimllm train` options


def train_tiny(root: Path, *options, n_bytes: int = 200_000, steps: int = 5) -> Path:
    """A tiny model (the tiny preset in SMALL_SHAPE) trained a few steps on real text by the real command, as a
    user would; its folder. With 200 conversation-skill dialogues mixed in unless the options say otherwise (the
    default 20,000 take a minute to make and tokenize, and a few steps learn nothing from them)."""
    (root / "corpus.txt").write_text(real_text(n_bytes))
    if not any(str(o).endswith("chat-skills") for o in options):
        options += ("--chat-skills", 200)
    out = run_cli("train", root / "corpus.txt", "--model", root / "model", "--preset", "tiny", *SMALL_SHAPE,
                  "--vocab-size", "300", "--steps", steps, *options)
    assert out.returncode == 0, out.stderr
    return root / "model"


@pytest.fixture(scope="session")
def tok():
    """A byte-level BPE tokenizer of 400 tokens trained on real text (no model): for the tests of what a turn,
    a reply or a stream does with tokens."""
    from nimllm.tokenizer import Tokenizer
    return Tokenizer.train([real_text(60_000)], vocab_size=400)


# the recipe of the model the session shares: train_tiny's conversation skills and 40 agent-skill episodes, so
# that the chat, the server, the agent and the benchmarks can all use it
SHARED_OPTIONS = ("--agent-skills", 40)


def files_of(folder: Path) -> list[tuple[str, int, int]]:
    """Every file and folder under `folder`: its path, size and modification time."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny model trained once per session by the real command (train_tiny with SHARED_OPTIONS); its folder.
    Read-only: whatever may write into a model folder (a chat, a server, learning) gets a copy (copy_model,
    tiny_copy). At the end of the session the folder must be as training left it."""
    folder = train_tiny(tmp_path_factory.mktemp("tiny"), *SHARED_OPTIONS)
    before = files_of(folder)
    yield folder
    assert files_of(folder) == before, "a test changed the shared tiny model: give it a copy (tiny_copy)"


def copy_model(folder: Path, root: Path) -> Path:
    """A copy of the model folder `folder` at root/model."""
    return Path(shutil.copytree(folder, root / "model"))


@pytest.fixture
def tiny_copy(tiny_model, tmp_path) -> Path:
    """This test's own copy of the shared tiny model."""
    return copy_model(tiny_model, tmp_path)


def probe_sandbox() -> Sandbox:
    """Whether bubblewrap makes a sandbox here, probed in a folder under /var/tmp as the tests' own are
    (a probe in /tmp can answer differently from the tests it decides on)."""
    folder = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        return Sandbox(folder)
    finally:
        shutil.rmtree(folder)


SANDBOX_PROBE = probe_sandbox()
sandboxed = pytest.mark.skipif(not SANDBOX_PROBE.active, reason=f"no sandbox here: {SANDBOX_PROBE.reason}")


@pytest.fixture
def work():
    """An agent's working folder with two Python files, outside /tmp (as the agent's is) so that what
    the sandbox hides and binds is real."""
    path = Path(tempfile.mkdtemp(prefix="nimllm-work-", dir="/var/tmp")) / "project"
    path.mkdir()
    (path / "a.py").write_text("print(1)\n")
    (path / "b.py").write_text("print(2)\n")
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


def model_favouring(root: Path, text: str, favour) -> Path:
    """A tiny model folder (tokenizer trained on `text`) whose blocks add nothing, so that every
    position scores each token by the size of its (tied) embedding: 1, or what `favour(tokenizer)`
    gives it ({token id: score})."""
    import torch
    from nimllm.checkpoint import save_config, save_weights
    from nimllm.config import PRESETS, ModelConfig, ModelFolder
    from nimllm.model import GPT
    from nimllm.tokenizer import Tokenizer
    folder = ModelFolder(root)
    tokenizer = Tokenizer.train([text] * 50, vocab_size=300)
    folder.root.mkdir()
    tokenizer.save(folder.tokenizer)
    cfg = ModelConfig(**{**PRESETS["tiny"].model.__dict__, "vocab_size": 320})
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_() if p.dim() > 1 else p.fill_(1.0)
        model.wte.weight.fill_(1.0)
        for token, score in favour(tokenizer).items():
            model.wte.weight[token] = score
    save_config(folder, cfg, PRESETS["tiny"].train, "tiny", [])
    save_weights(folder, model, 0)
    return folder.root


@pytest.fixture(scope="session")
def calling_model(tmp_path_factory) -> Path:
    """A model folder whose model opens a tool call whatever it is asked, and says " plain words"
    where it may not: `<|tool_call|>` scores largest and a few word tokens next."""
    return model_favouring(tmp_path_factory.mktemp("caller") / "model", "plain words and more words " * 10,
                           lambda tok: {**{i: 2.0 for i in set(tok.encode(" plain words"))},
                                        tok.special("<|tool_call|>"): 3.0})
