"""`nimllm eval`: the trainer's own validation figures on any text, and one-line errors for bad input."""
import json

import pytest

from conftest import run_cli
from nimllm.config import ModelFolder, UserError
from nimllm.evaluate import evaluate_text
from nimllm.tokenizer import Tokenizer

pytestmark = pytest.mark.slow   # every test here scores the session's trained model


@pytest.fixture(scope="module")
def trained(tiny_model) -> tuple[ModelFolder, str]:
    """The session's tiny model (eval only reads it), and the text it was trained on."""
    return ModelFolder(tiny_model), (tiny_model.parent / "corpus.txt").read_text()


def test_eval_gives_the_loss_the_trainer_measured_on_its_validation_text(trained, tmp_path):
    folder, text = trained
    logged = [json.loads(line) for line in folder.metrics.read_text().splitlines()]
    validation = [e for e in logged if "val_loss" in e][-1]
    val_text = tmp_path / "val.txt"
    val_text.write_text(text[int(len(text) * 0.9):])          # a single file's last 10% is its validation split
    out = run_cli("eval", "--model", folder.root, "--json", val_text)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["loss"] == pytest.approx(validation["val_loss"], rel=1e-5)
    assert result["bpb"] == pytest.approx(validation["val_bpb"], rel=1e-5)
    assert result["perplexity"] == pytest.approx(2.718281828 ** result["loss"], rel=1e-6)
    assert result["bytes"] == len(text[int(len(text) * 0.9):].encode())


def test_a_folder_is_evaluated_as_its_text_files_one_after_another(trained, tmp_path):
    folder, text = trained
    (tmp_path / "docs" / "more").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text(text[:3000])
    (tmp_path / "docs" / "more" / "b.md").write_text(text[5000:9000])
    (tmp_path / "docs" / "image.bin").write_bytes(bytes(range(256)) * 20)     # skipped, as training skips it
    a, b = (evaluate_text(folder, tmp_path / "docs" / name) for name in ("a.txt", "more/b.md"))
    both = evaluate_text(folder, tmp_path / "docs")
    assert both["bytes"] == a["bytes"] + b["bytes"]
    assert both["tokens"] == a["tokens"] + b["tokens"] + 1    # b's first token is predicted from a's end
    assert min(a["loss"], b["loss"]) < both["loss"] < max(a["loss"], b["loss"]) + 0.1


def test_conversations_are_scored_as_the_chat_template_renders_them(trained, tmp_path):
    folder, _ = trained
    messages = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi, how are you?"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": messages}) + "\n")
    ids, _ = Tokenizer.load(folder.tokenizer).render_conversation([(m["role"], m["content"]) for m in messages])
    assert evaluate_text(folder, tmp_path / "chat.jsonl")["tokens"] == len(ids)   # ids and <|endoftext|>, less one


def test_eval_refuses_what_it_cannot_score_in_one_line(trained, tmp_path):
    folder, _ = trained
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "program").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(1000))
    (tmp_path / "no_text").mkdir()
    (tmp_path / "records.jsonl").write_text('{"title": "no text field"}\n')
    cases = {"empty.txt": "is empty", "program": "is a binary file", "no_text": "has no text files",
             "missing.txt": "no such file", "records.jsonl": "no text to evaluate"}
    for name, says in cases.items():
        with pytest.raises(UserError, match=says):
            evaluate_text(folder, tmp_path / name)
    with pytest.raises(UserError, match="no model in"):
        evaluate_text(ModelFolder(tmp_path / "no_model"), tmp_path / "records.jsonl")
    out = run_cli("eval", "--model", folder.root, tmp_path / "program")     # as the command line shows it
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"nimllm: error: {tmp_path / 'program'} is a binary file, not text"]
