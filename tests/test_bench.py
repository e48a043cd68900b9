"""The benchmarks run end to end on the CPU (their figures come from the GPU; see bench/results)."""
import json
from dataclasses import asdict
import subprocess
import sys

import pytest

from conftest import REPO, sandboxed

from nimllm.checkpoint import load_config
from nimllm.config import PRESETS, ModelFolder
from nimllm.memory import Memory

pytestmark = pytest.mark.slow   # each runs a benchmark (or its refusal) in a new process



def run_bench(*args):
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


# nanoGPT's model.py API as bench/train_speed.py --nanogpt uses it (GPTConfig; GPT(config)(idx, targets) ->
# (logits, loss); configure_optimizers), in a few lines: the real one is a checkout this repository has not
NANOGPT_STAND_IN = """
from dataclasses import dataclass
import torch, torch.nn as nn, torch.nn.functional as F

@dataclass
class GPTConfig:
    block_size: int = 8
    vocab_size: int = 16
    n_layer: int = 1
    n_head: int = 1
    n_embd: int = 8
    dropout: float = 0.0
    bias: bool = True

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte, self.seen = nn.Embedding(config.vocab_size, config.n_embd), config
    def forward(self, idx, targets=None):
        logits = self.wte(idx) @ self.wte.weight.T
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
"""


def test_train_speed_bench_writes_rows_and_ratios(tmp_path):
    out, nanogpt = tmp_path / "speed.json", tmp_path / "nanoGPT"
    nanogpt.mkdir()
    (nanogpt / "model.py").write_text(NANOGPT_STAND_IN)
    run_bench("bench/train_speed.py", "--preset", "tiny", "--steps", "1", "--warmup", "1", "--micro-batch", "2",
              "--nanogpt", nanogpt, "--only", "nimllm", "reference eager", "nimllm --fp8", "nanogpt model.py compiled",
              "--out", out)
    result = json.loads(out.read_text())
    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == {"nimllm", "reference eager", "nimllm --fp8", "nanogpt model.py compiled"}
    assert rows["nimllm"]["tokens_per_s"] > 0 and rows["reference eager"]["vs_reference"] == 1.0
    assert "no FP8 matmuls" in rows["nimllm --fp8"]["error"]   # a CPU: the row says why it has no figure
    nano = rows["nanogpt model.py compiled"]   # the stand-in built at tiny's size: its embedding alone
    tiny = PRESETS["tiny"].model
    assert nano["tokens_per_s"] > 0 and nano["params"] == tiny.vocab_size * tiny.n_embd


def test_quality_bench_cuts_a_text_where_nanogpt_does_and_trains_on_the_files_before_the_cut(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    from quality import split
    docs = [("a.md", "# a\n" + "alpha " * 30), ("b.md", "# b\n" + "beta " * 30), ("c.md", "# c\nend\n")]
    train, heldout, whole = split(docs, tmp_path)
    cut = int(len(whole) * 0.9)   # nanoGPT's prepare.py: data[:int(n*0.9)], data[int(n*0.9):]
    assert train.is_dir() and sorted(p.name for p in train.iterdir()) == ["a.md", "b.md"]
    assert (train / "a.md").read_text() == docs[0][1] and (train / "b.md").read_text() == whole[len(docs[0][1]):cut]
    assert heldout.read_text() == whole[cut:] and whole == "".join(text for _, text in docs)
    one_file, _, _ = split(docs[:1], tmp_path / "one")
    assert one_file.is_file() and one_file.name == "a.md"


def test_quality_bench_trains_and_scores_through_the_commands(tmp_path):
    out = tmp_path / "quality.json"
    run_bench("bench/quality.py", "--texts", "notes", "--seconds", "8", "--device", "cpu", "--out", out)
    result = json.loads(out.read_text())
    [row] = result["rows"]   # no --nanogpt: NimLLM's row alone
    assert result["finished"] is True   # (written after each row with False, in case the run is cut short)
    assert row["text"] == "notes" and row["row"] == "nimllm --time 8s" and 0 < row["bits_per_byte"] < 8
    assert 0.09 * row["bytes"] < row["held_out_bytes"] < 0.11 * row["bytes"]   # the last 10% of the characters
    assert row["params"] > 0 and any(line.startswith("--time 0m08s:") for line in row["said"])
    steps = [step for step, _ in row["validation"]]   # the run's own validations, the last at its end
    assert steps == sorted(steps) and steps[-1] > 0 and all(0 < bpb < 8 for _, bpb in row["validation"])


def test_memory_bench_teaches_and_asks_through_chat_processes(tmp_path, tiny_copy):
    """Behaviour, not recall (a test-sized model, two steps an update): each fact is told to its own `nimllm chat`
    process and asked in new ones, in copies; the model folder given is left as it was."""
    from nimllm.config import memory_config
    from nimllm.store import Store
    model = tiny_copy
    files = lambda: sorted((str(p.relative_to(model)), p.stat().st_size, p.stat().st_mtime_ns)   # noqa: E731
                           for p in model.rglob("*"))
    before = files()
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join((REPO / "bench" / "memory_facts.jsonl").read_text().splitlines(keepends=True)[:2]))
    out, work = tmp_path / "memory.json", tmp_path / "work"
    run_bench("bench/memory.py", "--model", model, "--k", "2", "--facts", facts, "--no-paraphrase", "--jobs", "2",
              "--threads", "1", "--work", work, "--out", out,   # 1 thread: a shared CI CPU stays quick
              # two designs of two updates each: what the rows say, not what they learn (2 steps, not 32)
              "--in-process", "steps=2", "keep_answers=False,learned_loss=0.3,steps=2")
    result = json.loads(out.read_text())
    designs = result["in_process"]["rows"]   # the same facts learned in one process, once per setting
    assert [(r["k"], r["memory"]["keep_answers"], r["memory"]["learned_loss"]) for r in designs] == \
        [(2, True, memory_config("tiny").learned_loss), (2, False, 0.3)]
    assert [r["changes"] for r in designs] == [{"steps": 2}, {"keep_answers": False, "learned_loss": 0.3, "steps": 2}]
    assert all(r["memory"]["steps"] == 2 and max(r["steps"]) <= 2 for r in designs)
    for r in designs:
        assert r["recall"][1] == 2 and r["sampled"][1] == 6 and r["paraphrase"][1] == 2 and r["control_kept"][1] == 40
        assert len(r["steps"]) == 2 and r["update_s_median"] > 0
    [row] = result["rows"]
    assert (row["k"], row["teach_processes"], row["ask_processes"]) == (2, 2, 4)   # 2 as taught, 2 weights only
    assert row["recall"][1] == row["weights_only"][1] == 2 and row["paraphrase"] is None
    assert row["update_s_median"] > 0 and row["time_to_prompt_s_median"] > 0
    for fact in result["facts"]:
        teach = fact["teach"]
        assert teach["returncode"] == 0 and teach["error"] is None
        assert f"you> {fact['statement']}\nnimllm> " in teach["transcript"] and isinstance(teach["reply"], str)
        assert teach["time_to_prompt_s"] > 0 and teach["exit_s"] > 0
        assert sorted(a["mode"] for a in fact["asks"]) == ["as taught", "weights only"]
        for ask in fact["asks"]:
            assert ask["returncode"] == 0 and isinstance(ask["reply"], str) and ask["time_to_prompt_s"] > 0
            assert f"you> {fact['question']}\n" in ask["transcript"] and ask["recalled"] in (True, False)
    with Store(work / "teach" / "conversations.sqlite") as store:   # the copy learned in: the two facts told
        assert sorted(m.content for c in store.conversations() for m in store.messages(c.id) if m.role == "user") == \
            sorted(json.loads(line)["statement"] for line in facts.read_text().splitlines())
    assert not list((work / "weights-only-k2" / "memory").glob("delta-*"))   # asked there, never taught there
    assert files() == before and not (model / "conversations.sqlite").exists()
    settings = result["settings"]
    assert settings["model_config"] == asdict(load_config(ModelFolder(model))["model"])
    assert load_config(ModelFolder(model))["preset"] == "tiny"   # whose memory settings are its preset's
    assert settings["memory_config"] == asdict(memory_config("tiny")) and settings["memory_config"]["lr"] == 3e-3
    assert settings["git"]["commit"] and settings["torch"] and settings["device"] == "cpu"


def test_memory_bench_overlap_starts_the_next_teaching_chat_while_the_last_learns(tmp_path, tiny_copy):
    """--overlap: each teaching chat starts once the one before has ended its input, never more than two at
    once, and every fact is still learned into the one copy (the updates take turns under the store's lock)."""
    from nimllm.store import Store
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join((REPO / "bench" / "memory_facts.jsonl").read_text().splitlines(keepends=True)[:3]))
    out, work = tmp_path / "memory.json", tmp_path / "work"
    run_bench("bench/memory.py", "--model", tiny_copy, "--k", "3", "--facts", facts, "--no-paraphrase",
              "--no-weights-only", "--threads", "1", "--overlap", "--work", work, "--out", out)
    result = json.loads(out.read_text())
    teach = [f["teach"] for f in result["facts"]]
    assert result["settings"]["overlap"] is True
    assert all(t["returncode"] == 0 and t["error"] is None and t["learned"] for t in teach)   # each updated
    assert teach[1]["launched_at"] < teach[0]["exited_at"]           # the second started while the first learned
    assert teach[2]["launched_at"] >= teach[0]["exited_at"]          # the third only once the first had exited
    assert [t["launched_at"] for t in teach] == sorted(t["launched_at"] for t in teach)
    with Store(work / "teach" / "conversations.sqlite") as store:
        assert len(store.conversations()) == 3
    [row] = result["rows"]
    assert (row["teach_processes"], row["ask_processes"], row["conversations"]) == (3, 3, 3)


def test_first_update_bench_times_updates_after_a_dry_warm_up_that_changes_nothing(tmp_path, tiny_copy):
    """Both variants learn the same facts in new processes; the dry warm-up moves no weight, so the
    updates after it take as many steps as without it."""
    model = tiny_copy
    out = tmp_path / "first_update.json"
    run_bench("bench/first_update.py", "--model", model, "--device", "cpu", "--updates", "1", "--out", out)
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"none", "dry"} and rows["dry"]["warm_up_s"] > 0 and rows["none"]["warm_up_s"] is None
    assert all(len(r["updates"]) == 1 and all(u["total_s"] > 0 for u in r["updates"]) for r in rows.values())
    assert [u["n_steps"] for u in rows["dry"]["updates"]] == [u["n_steps"] for u in rows["none"]["updates"]]
    assert not (model / "conversations.sqlite").exists()   # it learned in copies


def test_generation_bench_runs_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "generate.json"
    run = subprocess.run([sys.executable, "bench/generate.py", "--preset", "tiny", "--vocab-size", "300",
                          "--prompt-tokens", "8", "--new-tokens", "6", "--batch", "1", "2", "--device", "cpu",
                          "--only", "transformers generate, float32", "nimllm float32", "nimllm float16",
                          "--out", out], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {(r["config"], r["batch"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("transformers generate, float32", 1), ("nimllm float32", 1), ("nimllm float16", 1),
                         ("nimllm float16", 2)}
    assert rows[("transformers generate, float32", 1)]["vs_reference"] == 1.0
    assert all(r["tokens_per_s"] > 0 and r["ttft_s"] > 0 and len(r["tokens"]) == 6 for r in rows.values())


def test_serve_bench_end_to_end(tiny_copy, tmp_path):
    out = tmp_path / "serve.json"
    result = subprocess.run([sys.executable, "bench/serve.py", "--model", tiny_copy, "--clients", "1", "3",
                             "--requests", "2", "--new-tokens", "4", "--max-batch", "2", "--out", out],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["clients"], r["requests"]) for r in rows] == [(1, 2), (3, 6)]
    assert all(r["tokens_per_s"] > 0 and 0 < r["ttft_median_s"] <= r["ttft_p90_s"] for r in rows)


@sandboxed   # it runs what the model writes, which only the sandbox makes harmless
def test_agent_bench_runs_end_to_end(tiny_copy, tmp_path):
    """Hand-written requests (every fourth kind of them: taught and untaught), a few generated ones,
    a learning set with corrections, two memory settings; every figure of the report is there."""
    Memory(ModelFolder(tiny_copy), "cpu").fisher   # estimated before, as for the agent's own tests
    out = tmp_path / "agent.json"
    run = subprocess.run([sys.executable, "bench/agent.py", "--model", str(tiny_copy), "--limit", "6", "--generated", "2",
                          "--learn", "3", "--max-steps", "2", "--memory", "steps=2", "agent_lr=1e-4,steps=2", "--fix",
                          "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    before = result["tasks"]["before"]
    assert sum(len(rows) for rows in before.values()) == 8 and len(before["generated"]) == 2
    assert {"taught kinds", "generated"} <= set(result["before"])
    for s in result["before"].values():
        assert {"success", "within_3", "first_right", "carries", "well_formed", "answered_without_command",
                "failed_command", "recovered"} <= set(s)
    assert [(v["memory"]["agent_lr"], v["memory"]["steps"]) for v in result["variants"]] == [(1e-5, 2), (1e-4, 2)]
    learning = result["tasks"]["variants"][0]["learning"]   # every task of the learning set approved or corrected
    assert sum(len(rows) for rows in learning.values()) == 3
    assert all(r["success"] != r["fixed"] for rows in learning.values() for r in rows)
    assert result["sandboxed"] and "agent requests" in run.stdout


def test_agent_loss_bench_scores_commands_and_answers_of_new_episodes(tiny_copy, tmp_path):
    """Two models (the same one twice: the same figures), a few held-out episodes: bits per byte on commands
    and on answers, and the share of first commands right, per model."""
    out = tmp_path / "agent_loss.json"
    run_bench("bench/agent_loss.py", "--model", tiny_copy, tiny_copy, "--episodes", "6", "--out", out)
    result = json.loads(out.read_text())
    first, second = result["rows"]
    assert result["episodes"] == 6 and result["seed"] == 8 and first == second
    assert 0 < first["bpb_tool_call"] < 20 and 0 < first["bpb_assistant"] < 20
    assert 0 <= first["first_command_exact"] <= 1 and 0 <= first["words_copied"] <= 1


@pytest.mark.parametrize("bench", ["bench/agent.py", "bench/memory.py", "bench/first_update.py", "bench/agent_loss.py"])
def test_a_missing_model_is_one_line_and_a_failure(bench, tmp_path):
    out = subprocess.run([sys.executable, bench, "--model", str(tmp_path / "none")], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"{bench}: no model in {tmp_path / 'none'}: train one first with "
                                               "`nimllm --train FILE`"]
