"""The agent-skill corpus: episodes are well formed and true (checked against the files by Python, not
by the same command), held-out phrasings and kinds never appear, and the corpus mixed into another
becomes token shards with the tool tokens in them."""
import json
import random
import re
import subprocess

import numpy as np

from conftest import real_text

from nimllm import skills
from nimllm.data import TokenShards, prepare_corpus
from nimllm.sandbox import Sandbox
from nimllm.tokenizer import Tokenizer


def template_pattern(template: str) -> re.Pattern:
    """A request template as a regex matching any filling of its slots."""
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+?", re.escape(template)) + "$")


def true_count(kind: str, root, v: dict, files: list) -> int | None:
    """The number a counting task's answer must hold, counted by Python."""
    if kind == "count_ext":
        return sum(p.suffix == v["ext"] for p in files)
    if kind == "count_lines":
        return (root / v["file"]).read_text().count("\n")
    if kind == "file_size":
        return (root / v["file"]).stat().st_size
    if kind == "count_in_folder":
        return sum(1 for p in (root / v["folder"]).rglob("*") if p.is_file())
    return None


def test_episodes_tell_the_truth_about_the_folder(tmp_path):
    checked = set()
    for seed in range(6):
        rng = random.Random(seed)
        s = skills.make_scratch(rng, tmp_path)
        sandbox = Sandbox(s.root)
        files = [p for p in s.root.rglob("*") if p.is_file() and ".git" not in p.parts]
        for task in skills.tasks_for(s, rng, count=40):
            episode = skills.episode(task, sandbox.run(task.command), rng)
            if episode is None:
                continue
            roles = [m["role"] for m in episode["messages"]]
            assert roles == ["user", "tool_call", "tool", "assistant"]
            assert episode["messages"][2]["content"].startswith("[exit 0]")
            answer, v = episode["messages"][3]["content"], task.values
            count = true_count(task.kind.name, s.root, v, files)
            if count is not None:
                assert re.search(rf"\b{count}\b", answer), (task.request, answer)
                checked.add(task.kind.name)
            if task.kind.name == "find_file":
                assert any(str(p.relative_to(s.root)) in answer for p in files if p.name == v["base"])
                checked.add("find_file")
            if task.kind.check == "files":
                assert task.kind.files(s.root, v), task.command
                checked.add(task.kind.name)
    assert {"count_ext", "count_lines", "file_size", "find_file", "make_folder", "make_file"} <= checked


def test_the_corpus_holds_only_trained_kinds_and_phrasings():
    episodes = skills.generate_episodes(120, seed=5, workers=2)
    assert len(episodes) == 120 and len({e["kind"] for e in episodes}) >= 15
    for e in episodes:
        kind, request = skills.KINDS[e["kind"]], e["messages"][0]["content"]
        assert kind.trained_kind
        assert any(template_pattern(t).match(request) for t in kind.trained), request
        assert not any(template_pattern(t).match(request) and t not in kind.trained for t in kind.held_out), request
    held_out_kinds = [k for k in skills.KINDS.values() if not k.trained_kind]
    assert len(held_out_kinds) == 3 and all(k.held_out and not k.trained for k in held_out_kinds)
    assert all(len(k.held_out) >= 2 for k in skills.KINDS.values())


def test_a_mixed_corpus_becomes_shards_with_tool_calls(tmp_path):
    text = tmp_path / "book.txt"
    text.write_text(real_text(30_000))
    corpus = skills.write_corpus(tmp_path / "skills.jsonl", 40, seed=1, log=lambda *_: None)
    lines = corpus.read_text().splitlines()
    corpus.write_text("\n".join(lines + ['{"messages": [{"role": "wizard", "content": "x"}]}', '{"messages": 3}']) + "\n")
    tokenizer = Tokenizer.train([text.read_text(), corpus.read_text()], vocab_size=300)
    info = prepare_corpus([text, corpus], tokenizer, tmp_path / "data", block_size=64, quiet=True)
    assert info.stats.documents == 1 + 40 and info.stats.skipped_lines == 2
    tokens = np.concatenate([np.asarray(s) for split in ("train", "val")
                             for s in TokenShards(tmp_path / "data", split).shards])
    call, close = tokenizer.special("<|tool_call|>"), tokenizer.special("<|/tool_call|>")
    assert (tokens == call).sum() == (tokens == close).sum() == 40     # one call per episode, in both splits
    assert TokenShards(tmp_path / "data", "val").num_tokens > 0
    first = json.loads(lines[0])["messages"]
    ids, mask = tokenizer.render_conversation([(m["role"], m["content"]) for m in first])
    assert tokenizer.decode(ids).startswith(f"<|user|>{first[0]['content']}<|end|><|assistant|><|tool_call|>")
    output = tokenizer.encode(first[2]["content"])
    start = next(i for i in range(len(ids)) if ids[i:i + len(output)] == output)
    assert not any(mask[start:start + len(output) + 1]) and all(mask[start + len(output) + 2:])  # output not learned


def test_git_folders_are_real_repositories(tmp_path):
    rng = random.Random(0)
    s = next(s for s in (skills.make_scratch(rng, tmp_path) for _ in range(20)) if s.git)
    log = subprocess.run(["git", "log", "--format=%s"], cwd=s.root, capture_output=True, text=True, check=True)
    assert set(log.stdout.splitlines()) <= set(skills.COMMITS) and log.stdout.strip()
