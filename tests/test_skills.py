"""The agent-skill corpus: episodes run their commands for real and answer from what they printed
(nimllm/tasks.py and tests/test_tasks.py check the commands against Python), some go wrong first and
recover, and the corpus mixed into another becomes token shards with the tool tokens in them."""
import json
import random
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import real_text

from nimllm import skills
from nimllm.data import TokenShards, prepare_corpus
from nimllm.tokenizer import Tokenizer
from nimllm.turns import AGENT_MODE


@pytest.mark.slow
def test_episodes_run_their_commands_and_answer_from_what_they_printed(tmp_path):
    """Each episode: the request, then calls each followed by what it really printed, then the answer.
    Every call before the last went wrong or looked for a file, the last succeeded, and the answer is
    what the request's own answer function reads from that output."""
    episodes = [e for seed in range(12) for e in skills.folder_episodes(seed, str(tmp_path), per_folder=10)]
    assert len(episodes) >= 80 and len({e["kind"] for e in episodes}) >= 40
    detours = 0
    for e in episodes:
        roles = [m["role"] for m in e["messages"]]
        calls = len(roles[2:-1]) // 2
        assert roles == ["system", "user"] + ["tool_call", "tool"] * calls + ["assistant"] and 1 <= calls <= 3
        assert e["messages"][0]["content"] == AGENT_MODE   # the agent's mode, as the agent shows it in use
        tools = [m["content"] for m in e["messages"] if m["role"] == "tool"]
        assert tools[-1].startswith("[exit 0]") or e["kind"] == "diff_files" or \
            tools[-1].startswith("[exit 1]") and e["kind"].startswith("grep") or \
            tools[-1].startswith("[exit 128]") and e["kind"].startswith("git")   # (found nothing; no repository)
        commands = [m["content"] for m in e["messages"] if m["role"] == "tool_call"]
        if calls > 1 and not (commands[0] == "ls" or commands[0].startswith("ls ")):   # (a described file)
            detours += 1
            assert not tools[0].startswith("[exit 0]") and not commands[0].startswith("find . -name"), commands
        assert e["messages"][-1]["content"].strip()
    assert detours >= 3


@pytest.mark.slow
def test_no_name_or_path_repeats_enough_to_be_learned(tmp_path):
    """Names must be copied, not known: over 60 folders most file stems occur once or twice, a good share
    is in no vocabulary, and every folder sits at a path of its own, beginning to end."""
    rng = random.Random(7)
    folders = [skills.make_scratch(rng, Path(tempfile.mkdtemp(prefix=f"{skills.made_up(rng)}-", dir=tmp_path)))
               for _ in range(60)]   # as folder_episodes makes them
    stems = [Path(f).name.split(".")[0].split("_")[0].split("-")[0].rstrip("0123456789") for s in folders
             for f in s.files if f not in s.lists]
    distinct = set(stems)
    assert len(distinct) >= 0.5 * len(stems) and len(distinct) >= 150
    assert len(distinct - set(skills.STEMS)) >= 0.15 * len(distinct)
    names = {s.root.name for s in folders} | {s.root.parent.name for s in folders}
    assert len(names) == 120   # neither the folder nor its parent is ever the same


@pytest.fixture(scope="module")
def many_episodes(tmp_path_factory):
    parent = str(tmp_path_factory.mktemp("episodes"))
    return [e for seed in range(60) for e in skills.folder_episodes(seed, parent, per_folder=10)]


def calls_of(e) -> list[tuple[str, str]]:
    """(command, what it printed) of each call of an episode."""
    m = e["messages"]
    return [(m[i]["content"], m[i + 1]["content"]) for i in range(len(m) - 1) if m[i]["role"] == "tool_call"]


@pytest.mark.slow
def test_find_looks_for_a_file_only_after_a_command_did_not_find_it(many_episodes):
    """No episode opens with `find` for a file it then uses: the command fails on the bare name ("No such
    file"), find shows the path, and the command runs again on it; or find shows nothing, and the
    answer says the file is not there."""
    found, missing = 0, 0
    for e in many_episodes:
        calls = calls_of(e)
        for i, (command, _) in enumerate(calls):
            if not command.startswith("find . -name '") or command.endswith("-not -path './.git/*'") or \
                    e["kind"] == "find_file" and i == 0:
                continue
            base = command.split("'")[1]
            assert i > 0 and "No such file" in calls[i - 1][1] and calls[i - 1][0].endswith(f" {base}"), calls
            if i + 1 < len(calls):
                found += 1
                assert calls[i + 1][0] == calls[i - 1][0].removesuffix(base) + calls[i][1].split("./")[1].strip()
            else:
                missing += 1
                assert calls[i][1] == "[exit 0]" and base in e["messages"][-1]["content"]
    assert found >= 10 and missing >= 10


@pytest.mark.slow
def test_a_command_that_slips_on_a_name_runs_again_on_the_name_asked_for(many_episodes):
    """A first command on a misspelt name (as a model's copies slip) fails with "No such file", and the
    same command runs again on the name in the request; no episode repeats the slip."""
    slips = 0
    for e in many_episodes:
        calls, request = calls_of(e), e["messages"][1]["content"]
        if len(calls) != 2 or calls[1][0].startswith("find ") or "No such file" not in calls[0][1]:
            continue
        wrong = calls[0][0].split()[-1]
        right = calls[1][0].split()[-1]
        if wrong == right or Path(wrong).name in request:
            continue   # (a file named without its folder: find shows the path, and that runs)
        slips += 1
        assert right in request and calls[0][0].removesuffix(wrong) == calls[1][0].removesuffix(right), calls
        assert Path(wrong).suffix == Path(right).suffix and Path(wrong).parent == Path(right).parent
        assert wrong not in e["messages"][-1]["content"]
    assert slips >= 10


@pytest.mark.slow
def test_a_described_file_is_looked_for_before_it_is_used(many_episodes):
    """A request that describes its file ("my shopping list") lists the folder the description places it
    in; the listing shows the file's name, which the request does not say and the next command uses."""
    looked = 0
    for e in many_episodes:
        calls, request = calls_of(e), e["messages"][1]["content"]
        if not calls[0][0].split()[0] == "ls" or e["kind"].startswith("list"):
            continue
        looked += 1
        folder = calls[0][0].removeprefix("ls").strip()
        listed = calls[0][1].splitlines()[1:]   # (after the exit line)
        used = [name for name in listed if re.search(rf"(^|[ '/]){re.escape(folder + '/' if folder else '')}"
                                                     rf"{re.escape(name)}($|[ ')])", calls[1][0])]
        assert len(calls) == 2 and len(used) == 1, calls
        assert used[0] not in request, (request, calls)
    assert looked >= 30


@pytest.mark.slow
def test_an_answer_after_nothing_found_says_so_and_makes_nothing_up(many_episodes):
    """Episodes whose last command printed nothing (a missing file, a word found nowhere) or could not work
    (git outside a repository) answer with a no, and every value in the answer (a number, a file name, a
    word in capitals) is in the request or in a command it ran (a file the request described: 'my list')."""
    empty = [e for e in many_episodes if (calls_of(e)[-1][1] in ("[exit 0]", "[exit 1]") or
                                          calls_of(e)[-1][1].startswith("[exit 128]")) and e["kind"] not in
             ("make_folder", "make_file", "append_line", "copy_file", "rename_file", "move_file", "replace_text",
              "archive_extract", "archive_make")]
    kinds = {e["kind"] for e in empty}
    assert len(empty) >= 15 and kinds & {"grep_files", "grep_lines", "grep_everywhere"} and kinds & {"git_log", "git_count"}
    for e in empty:
        answer, request = e["messages"][-1]["content"], e["messages"][1]["content"]
        assert re.search(r"\b(no|not|none|nothing|empty)\b", answer, re.I), answer
        values = [t.strip(".") for t in re.findall(r"[\w.-]+", answer[1:]) if re.search(r"[\d._A-Z-]", t.strip("."))]
        ran = " ".join(command for command, _ in calls_of(e))
        assert all(v in request or v in ran for v in values), (request, answer)


@pytest.mark.slow
@pytest.mark.slow
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
    calls = sum(line.count('"tool_call"') for line in lines)
    assert (tokens == call).sum() == (tokens == close).sum() == calls >= 40     # every call, in both splits
    assert TokenShards(tmp_path / "data", "val").num_tokens > 0
    first = json.loads(lines[0])["messages"]
    ids, mask = tokenizer.render_conversation([(m["role"], m["content"]) for m in first])
    assert tokenizer.decode(ids).startswith(f"<|system|>{AGENT_MODE}<|end|><|user|>{first[1]['content']}<|end|>"
                                            "<|assistant|><|tool_call|>")
    output = tokenizer.encode(first[3]["content"])
    start = next(i for i in range(len(ids)) if ids[i:i + len(output)] == output)
    assert not any(mask[start:start + len(output) + 1]) and all(mask[start + len(output) + 2:])  # output not learned


def test_git_folders_are_real_repositories(tmp_path):
    rng = random.Random(0)
    s = next(s for s in (skills.make_scratch(rng, tmp_path) for _ in range(20)) if s.git)
    log = subprocess.run(["git", "log", "--format=%s"], cwd=s.root, capture_output=True, text=True, check=True)
    assert log.stdout.splitlines() == s.commits[::-1] and log.stdout.strip()
