"""Bad input gets one clear line on stderr and a non-zero exit, never a traceback, and loses nothing."""
import resource
import shutil
import signal
from pathlib import Path

import pytest

from conftest import real_text, run_cli
from nimllm.cli import normalize_argv
from nimllm.config import ModelFolder

TINY = ["--preset", "tiny", "--vocab-size", "300"]


def assert_one_line_error(out, *fragments):
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nimllm: error:"), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_flag_form_becomes_subcommand():
    assert normalize_argv(["--train", "book.txt", "--steps", "5"]) == ["train", "book.txt", "--steps", "5"]
    assert normalize_argv(["--model", "x", "--train"]) == ["train", "--model", "x"]
    assert normalize_argv(["generate", "hi"]) == ["generate", "hi"]


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0 and "train" in out.stdout and "generate" in out.stdout and "--train" in out.stdout


# name -> (contents: bytes, a folder, or None for nothing there; what the error must say)
BAD_CORPORA = {
    "nope.txt": (None, ["no such file or folder", "nope.txt"]),
    "empty.txt": (b"", ["has no text to train on"]),
    "blob.dat": (b"\0\1\2" * 1000, ["has no text to train on", "1 binary"]),
    "short.txt": (b"just a few words", ["corpus too short"]),
    "emptyfolder": ("folder", ["has no text to train on"]),
    "notext.jsonl": (b'{"title": "no text"}\n' * 50, ['"text"']),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_CORPORA)
def test_bad_corpus(tmp_path, home, name):
    contents, fragments = BAD_CORPORA[name]
    path = tmp_path / name
    if contents == "folder":
        path.mkdir()
    elif contents is not None:
        path.write_bytes(contents)
    assert_one_line_error(run_cli("train", path, *TINY, "--no-chat-skills"), *fragments)   # dialogues would fill it
    assert not (home / "models" / "default" / "model.safetensors").exists()


@pytest.mark.slow
def test_missing_model(home):
    assert_one_line_error(run_cli("generate", "hello"), "no model in", "nimllm --train")
    assert_one_line_error(run_cli("info", "--model", "nothing-here"), "no model in")


FIVE_STEPS = [*TINY, "--steps", "5", "--no-chat-skills"]   # (no dialogues to make, tokenize and train on)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    """A model `nimllm train CORPUS FIVE_STEPS` made, once for this module (tests change a copy); its folder,
    beside the corpus.txt it was trained on."""
    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.txt").write_text(real_text(200_000))
    out = run_cli("train", root / "corpus.txt", "--model", root / "model", *FIVE_STEPS)
    assert out.returncode == 0, out.stderr
    return root / "model"


@pytest.fixture
def trained(trained_once, home) -> ModelFolder:
    """This test's copy of it, where `nimllm` looks when no --model is given."""
    shutil.copytree(trained_once, home / "models" / "default")
    return ModelFolder.resolve("default")


@pytest.fixture
def default_model(tiny_model, home) -> ModelFolder:
    """The session's tiny model, copied to where `nimllm` looks when no --model is given."""
    shutil.copytree(tiny_model, home / "models" / "default")
    return ModelFolder.resolve("default")


@pytest.mark.slow
def test_corrupt_weights_and_config(default_model):
    trained = default_model
    good = trained.weights.read_bytes()
    trained.weights.write_bytes(good[:len(good) // 2])               # cut short, as by a full disk
    assert_one_line_error(run_cli("generate", "hi"), "model.safetensors", "damaged")
    # the chat shows its prompt first and loads the model while you type: the error still comes as one line
    assert_one_line_error(run_cli("chat", input="hello\n"), "model.safetensors", "damaged")
    trained.weights.write_bytes(b"garbage" * 100)
    assert_one_line_error(run_cli("generate", "hi"), "damaged")
    trained.weights.write_bytes(good)
    trained.config.write_text("{ not json")
    assert_one_line_error(run_cli("generate", "hi"), "config.json", "damaged")


@pytest.mark.slow
def test_corrupt_training_state_when_resuming(trained, trained_once):
    trained.train_state.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    corpus = trained_once.parent / "corpus.txt"
    assert_one_line_error(run_cli("train", corpus, *FIVE_STEPS), "train_state.safetensors", "damaged")


def limit_file_size():
    """Writes past 1 MB fail with EFBIG, as they would on a full disk (SIGXFSZ would kill instead)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.slow
def test_full_disk_during_training_keeps_the_previous_model(trained, tmp_path):
    before = trained.weights.read_bytes()
    book2 = tmp_path / "book2.txt"
    book2.write_text("Another book entirely, about the sea and ships. " * 2000)
    out = run_cli("train", book2, "--steps", "5", preexec_fn=limit_file_size)
    assert_one_line_error(out, "too large")
    assert trained.weights.read_bytes() == before                     # the last good model is untouched
    assert run_cli("generate", "hi", "--max-tokens", "5").returncode == 0
    assert not [p for p in trained.root.rglob("*") if ".tmp" in p.name or ".building-" in p.name]
