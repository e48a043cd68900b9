"""The agent-skill corpus: episodes of everyday shell tasks, run for real, to teach a model tools.

A model trained on books has never seen a tool call. Each episode here is a request (one of several
phrasings), the command that does it, what that command really printed in a scratch folder full of
random names (run the way the agent runs commands: nimllm/sandbox.py), and an answer read from that
output. Some phrasings and whole kinds of task are never generated: the benchmark (bench/agent.py)
asks them, to see whether the model learned the skill or the sentences.

    rng = random.Random(0); tasks = list(tasks_for(make_scratch(rng, tmp), rng))
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nimllm.fileio import write_jsonl_once
from nimllm.sandbox import Limits, Result, Sandbox

WORDS = ("apple river stone garden window light paper music table winter summer coffee bread letter market "
         "morning evening cloud forest bridge train ticket yellow green silver quiet simple small large happy "
         "early late city road house friend story money water fire plant paint glass metal wood cotton chair "
         "doctor teacher garden animal bottle candle rabbit orange purple number people idea voice ocean").split()
KEYWORDS = "TODO FIXME deadline invoice banana password urgent meeting refund draft".split()
NAMES = "Alice Bruno Chen Dana Emil Farah Goran Hana Ivan Julia Kofi Lena Marco Nina Omar Priya Quinn Rosa".split()
STEMS = ("notes report todo main utils config data readme server client app setup index style draft budget "
         "letter recipe plan summary invoice schedule backup history list results chapter").split()
FOLDERS = "src docs data logs tests scripts notes assets backup archive reports drafts build tmp".split()
EXTENSIONS = ".txt .md .py .log .csv .json .sh .html .yaml".split()
COMMITS = ["first commit", "add readme", "fix typo", "update config", "add tests", "remove old files",
           "rename helper", "improve docs", "bump version", "fix crash on start", "add logging", "clean up"]
FORMATTERS = {".py": lambda r: "\n".join(f"def {r.choice(WORDS)}_{r.choice(WORDS)}():\n    return {r.randint(0, 99)}"
                                         for _ in range(r.randint(1, 6))),
              ".log": lambda r: "\n".join(f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} {r.randint(0, 23):02d}:"
                                          f"{r.randint(0, 59):02d} {r.choice(['INFO', 'INFO', 'WARNING', 'ERROR'])} "
                                          f"{r.choice(WORDS)} {r.choice(WORDS)}" for _ in range(r.randint(3, 25))),
              ".csv": lambda r: "name,value\n" + "\n".join(f"{r.choice(WORDS)},{r.randint(1, 999)}"
                                                           for _ in range(r.randint(2, 15)))}


def prose(rng: random.Random) -> str:
    return "\n".join(" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(rng.randint(2, 20)))


@dataclass
class Scratch:
    """A made-up project folder: what was put in it, for tasks to ask about."""
    root: Path
    files: list[str] = field(default_factory=list)       # relative paths
    folders: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)    # words found in some files and not others
    git: bool = False

    def text_files(self) -> list[str]:
        return [f for f in self.files if Path(f).suffix in (".txt", ".md", ".log", ".csv", ".py")]


def make_scratch(rng: random.Random, parent: Path) -> Scratch:
    """Files with random names and contents in random folders; mtimes shuffled; half of them git repos
    with a few commits and some changes since."""
    root = Path(tempfile.mkdtemp(prefix=f"{rng.choice(STEMS)}-", dir=parent))
    s = Scratch(root, folders=rng.sample(FOLDERS, rng.randint(0, 3)), keywords=rng.sample(KEYWORDS, 2))
    special = {"names.txt": lambda r: "\n".join(r.sample(NAMES, r.randint(3, 10))),
               "numbers.txt": lambda r: "\n".join(str(r.randint(1, 500)) for _ in range(r.randint(3, 12)))}
    names = rng.sample(sorted(special), rng.randint(0, 2))
    for _ in range(rng.randint(3, 12)):
        stem = rng.choice(STEMS) + rng.choice(["", "", f"_{rng.choice(WORDS)}", str(rng.randint(1, 9))])
        names.append(stem + rng.choice(EXTENSIONS))
    for name in dict.fromkeys(names):
        rel = str(Path(rng.choice([""] + s.folders)) / name) if name not in special else name
        text = special[name](rng) if name in special else FORMATTERS.get(Path(name).suffix, prose)(rng)
        if rng.random() < 0.3 and name not in special:
            text += f"\n{rng.choice(WORDS)} {s.keywords[0]} {rng.choice(WORDS)}"
        (s.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (s.root / rel).write_text(text + "\n")
        os.utime(s.root / rel, (1.7e9 + rng.randint(0, 10 ** 7),) * 2)
        s.files.append(rel)
    if rng.random() < 0.5 and shutil.which("git"):
        make_repo(rng, s)
    return s


def make_repo(rng: random.Random, s: Scratch) -> None:
    author = rng.choice(NAMES)
    env = {**os.environ, "GIT_AUTHOR_NAME": author, "GIT_COMMITTER_NAME": author, "GIT_AUTHOR_EMAIL": "a@b.c",
           "GIT_COMMITTER_EMAIL": "a@b.c", "GIT_CONFIG_GLOBAL": "/dev/null"}
    git = lambda *args: subprocess.run(["git", *args], cwd=s.root, env=env, check=True, capture_output=True)  # noqa: E731
    git("init", "-q", "-b", "main")
    for message in rng.sample(COMMITS, rng.randint(1, 5)):
        (s.root / rng.choice(s.files)).open("a").write(f"{rng.choice(WORDS)}\n")
        git("add", "-A")
        git("commit", "-q", "-m", message)
    for rel in rng.sample(s.files, rng.randint(0, 2)):
        (s.root / rel).open("a").write(f"{rng.choice(WORDS)}\n")
    s.git = True


# ---- the kinds of task -----------------------------------------------------------------------------------

def pick(rng: random.Random, items: list):
    return rng.choice(items) if items else None


def files_with(s: Scratch, word: str) -> list[str]:
    return [f for f in s.text_files() if word in (s.root / f).read_text()]


def new_name(rng: random.Random, s: Scratch, ext: str = "") -> str:
    return next(n for n in (f"{rng.choice(STEMS)}_{rng.choice(WORDS)}{ext}" for _ in range(100))
                if not (s.root / n).exists())


# how each slot of a request is filled from a scratch folder; None: the task does not fit this folder
SLOTS = {
    "ext": lambda r, s: r.choice(sorted({Path(f).suffix for f in s.files})),
    "folder": lambda r, s: pick(r, s.folders),
    "place": lambda r, s: pick(r, s.folders) or ".",
    "file": lambda r, s: r.choice(s.files),
    "base": lambda r, s: Path(r.choice(s.files)).name,
    "text_file": lambda r, s: r.choice(s.text_files() or s.files),
    "n": lambda r, s: r.randint(2, 5),
    "word": lambda r, s: s.keywords[0],
    "word_file": lambda r, s: pick(r, files_with(s, s.keywords[0])),
    "new": lambda r, s: new_name(r, s),
    "new_file": lambda r, s: new_name(r, s, r.choice([".txt", ".md"])),
    "text": lambda r, s: " ".join(r.sample(WORDS, r.randint(1, 3))),
    "git": lambda r, s: s.git or None,
    "names": lambda r, s: "names.txt" in s.files or None,
    "numbers": lambda r, s: "numbers.txt" in s.files or None,
}


def number(out: str) -> str | None:
    found = re.findall(r"\d+", out)
    return found[0] if len(found) == 1 else None


def names(out: str) -> str | None:
    """Up to five lines of output as a list in words."""
    items = [line.strip().removeprefix("./") for line in out.splitlines() if line.strip()]
    shown = items[:5] + ([f"{len(items) - 5} more"] if len(items) > 5 else [])
    return None if not shown else shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def first_line(out: str) -> str | None:
    lines = out.strip().splitlines()
    return lines[0].strip() if lines else None


def last_line(out: str) -> str | None:
    lines = out.strip().splitlines()
    return lines[-1].strip() if lines else None


def line_numbers(out: str) -> str | None:
    return names("\n".join(re.findall(r"^(\d+):", out, re.M)))


def git_changes(out: str) -> str:
    return f"these changed: {names(out)}" if out.strip() else "nothing changed"


def done(out: str) -> str:
    return "done"


@dataclass
class Kind:
    name: str
    command: str                     # a template over the slots
    answers: list[str]               # templates over the slots and {key}
    key: Callable[[str], str | None]  # what the answer needs from the output (None: nothing to answer)
    trained: list[str]               # request templates the corpus uses
    held_out: list[str]              # request templates only the benchmark asks
    check: str = "answer"            # benchmark: expected text in the "answer", or in what was "shown", or "files"
    expect: Callable[[str], str | None] | None = None   # the expected text from the output (default: key)
    files: Callable[[Path, dict], bool] | None = None    # with check "files": is the folder as asked?
    needs: str | None = None         # a slot the folder must have though no template names it
    trained_kind: bool = True        # False: a kind the corpus never has

    def slots(self) -> list[str]:
        text = self.command + "".join(self.trained + self.held_out)
        return [name for name in SLOTS if "{" + name + "}" in text or name == self.needs]


def K(name, command, answers, key, trained, held_out, **options) -> Kind:
    return Kind(name, command, answers, key, trained, held_out, **options)


KINDS = {k.name: k for k in [
    K("count_ext", "find . -name '*{ext}' | wc -l", ["There are {key} {ext} files.", "I count {key} {ext} files."], number,
      ["how many {ext} files are there?", "count the {ext} files", "how many {ext} files are in this folder?",
       "number of {ext} files here?", "tell me how many {ext} files I have"],
      ["what's the total of {ext} files in this directory?", "how many files end with {ext}?"]),
    K("count_in_folder", "find {folder} -type f | wc -l", ["{folder} has {key} files.", "There are {key} files in {folder}."],
      number, ["how many files are in {folder}?", "count the files in {folder}", "how many files does {folder} hold?",
               "number of files inside {folder}?"], ["what is the file count of {folder}?", "how many files sit in {folder}?"]),
    K("list_here", "ls", ["This folder has {key}.", "Here: {key}."], names,
      ["list the files here", "what files are in this folder?", "show me what is here", "ls", "what's in this directory?"],
      ["give me a listing of this folder", "which files and folders do I have here?"], check="shown", expect=first_line),
    K("list_folder", "ls {folder}", ["{folder} has {key}.", "In {folder}: {key}."], names,
      ["what is in {folder}?", "list the files in {folder}", "show the contents of {folder}", "ls {folder}"],
      ["what does the {folder} folder contain?", "which files are inside {folder}?"], check="shown", expect=first_line),
    K("find_file", "find . -name '{base}'", ["{base} is at {key}.", "Found it: {key}."], names,
      ["where is {base}?", "find {base}", "where can I find the file {base}?", "locate {base}", "which folder has {base}?"],
      ["in which directory is {base} stored?", "search for a file called {base}"], check="shown", expect=first_line),
    K("find_ext", "find . -name '*{ext}'", ["The {ext} files are {key}.", "Found {key}."], names,
      ["list the {ext} files", "find all {ext} files", "which {ext} files are there?", "show me the {ext} files"],
      ["give me every file ending in {ext}", "what are the names of the {ext} files?"], check="shown", expect=first_line),
    K("grep_files", "grep -rl '{word}' .", ["{word} appears in {key}.", "These files mention {word}: {key}."], names,
      ["which files mention {word}?", "find the files that contain {word}", "search for {word} in the files here",
       "where does {word} appear?", "grep for {word}"], ["which documents include the word {word}?",
                                                         "in what files can I find {word}?"],
      check="shown", expect=first_line, needs="word_file"),
    K("grep_lines", "grep -n '{word}' {word_file}", ["{word} is on line {key} of {word_file}.",
                                                      "Line {key} of {word_file} has {word}."], line_numbers,
      ["show the lines of {word_file} that contain {word}", "which lines of {word_file} mention {word}?",
       "find {word} in {word_file}", "grep {word} in {word_file}"],
      ["on what line of {word_file} is {word}?", "where in {word_file} does {word} occur?"],
      expect=lambda out: re.findall(r"^(\d+):", out, re.M)[0]),
    K("count_lines", "wc -l < {file}", ["{file} has {key} lines.", "There are {key} lines in {file}."], number,
      ["how many lines does {file} have?", "count the lines in {file}", "how long is {file} in lines?",
       "number of lines in {file}?", "wc -l {file}"], ["how many rows of text are in {file}?",
                                                       "what is the line count of {file}?"]),
    K("count_words", "wc -w < {text_file}", ["{text_file} has {key} words.", "There are {key} words in {text_file}."],
      number, ["how many words are in {text_file}?", "count the words in {text_file}", "word count of {text_file}?",
               "how many words does {text_file} have?"],
      ["how long is {text_file} in words?", "what is the number of words in {text_file}?"]),
    K("disk_use", "du -sh {place}", ["{place} takes {key}.", "{place} uses {key} on disk."], lambda out: first_line(out)
      and out.split()[0], ["how much space does {place} take?", "how big is the folder {place}?", "disk use of {place}?",
                           "what size is the folder {place}?"],
      ["how much disk does {place} use?", "check the size of {place}"]),
    K("file_size", "wc -c < {file}", ["{file} is {key} bytes.", "{file} has {key} bytes."], number,
      ["how big is {file}?", "what size is {file}?", "how many bytes is {file}?", "file size of {file}?"],
      ["how large is the file {file}?", "tell me the size of {file} in bytes"]),
    K("date_day", "date +%A", ["Today is {key}.", "It is {key}."], first_line,
      ["what day is it?", "what day of the week is it today?", "which weekday is it?", "is it monday today?"],
      ["tell me today's weekday", "what weekday are we on?"]),
    K("date_full", "date +%F", ["Today is {key}.", "The date is {key}."], first_line,
      ["what is the date today?", "what's today's date?", "today's date?", "which date is it?"],
      ["tell me the current date", "what date are we on?"]),
    K("date_time", "date +%H:%M", ["It is {key}.", "The time is {key}."], first_line,
      ["what time is it?", "tell me the time", "what's the time now?", "current time?"],
      ["what hour is it now?", "do you know the time?"], check="shown"),
    K("head_lines", "head -n {n} {text_file}", ["Those are the first lines of {text_file}.", "Here is the start of {text_file}."],
      first_line, ["show the first {n} lines of {text_file}", "print the first {n} lines of {text_file}",
                   "head of {text_file}", "what are the first {n} lines of {text_file}?"],
      ["display the top {n} lines of {text_file}", "let me see the beginning of {text_file}"], check="shown"),
    K("first_line", "head -n 1 {text_file}", ['The first line of {text_file} is "{key}".', '{text_file} starts with "{key}".'],
      first_line, ["what is the first line of {text_file}?", "show the first line of {text_file}",
                   "how does {text_file} start?", "print line 1 of {text_file}"],
      ["read me the opening line of {text_file}", "what does {text_file} begin with?"]),
    K("tail_lines", "tail -n {n} {text_file}", ["Those are the last lines of {text_file}.", "Here is the end of {text_file}."],
      last_line, ["show the last {n} lines of {text_file}", "print the last {n} lines of {text_file}",
                  "tail of {text_file}", "what are the last {n} lines of {text_file}?"],
      ["display the bottom {n} lines of {text_file}", "let me see the end of {text_file}"], check="shown"),
    K("last_line", "tail -n 1 {text_file}", ['The last line of {text_file} is "{key}".', '{text_file} ends with "{key}".'],
      first_line, ["what is the last line of {text_file}?", "show the last line of {text_file}",
                   "how does {text_file} end?", "print the final line of {text_file}"],
      ["read me the closing line of {text_file}", "what does {text_file} end with?"]),
    K("sort_names", "sort names.txt", ["Sorted: {key}.", "In order: {key}."], names,
      ["sort names.txt", "sort the names in names.txt alphabetically", "show names.txt sorted",
       "put names.txt in alphabetical order"], ["list the names from names.txt from A to Z", "alphabetize names.txt for me"],
      check="shown", expect=first_line, needs="names"),
    K("first_name", "sort names.txt | head -n 1", ["{key} comes first.", "The first name is {key}."], first_line,
      ["which name comes first alphabetically in names.txt?", "first name in alphabetical order in names.txt?",
       "what name in names.txt is first from A to Z?"], ["which entry of names.txt sorts first?",
                                                         "alphabetically, who is first in names.txt?"], needs="names"),
    K("smallest_number", "sort -n numbers.txt | head -n 1", ["The smallest number is {key}.", "The minimum is {key}."],
      number, ["what is the smallest number in numbers.txt?", "find the lowest number in numbers.txt",
               "which number in numbers.txt is the smallest?", "minimum of numbers.txt?"],
      ["what's the least value in numbers.txt?", "give me the minimum from numbers.txt"], needs="numbers"),
    K("git_status", "git status --short", ["Git says {key}.", "{key}."], git_changes,
      ["are there uncommitted changes?", "git status", "what changed since the last commit?", "is the working tree clean?",
       "do I have changes to commit?"], ["anything not committed yet?", "which files did I modify?"], needs="git"),
    K("git_last_commit", "git log -1 --format=%s", ['The last commit is "{key}".', 'It was "{key}".'], first_line,
      ["what was the last commit?", "show the last commit message", "what is the latest commit about?", "last commit?"],
      ["what did the most recent commit say?", "tell me the newest commit message"], needs="git"),
    K("git_count", "git rev-list --count HEAD", ["There are {key} commits.", "The repo has {key} commits."], number,
      ["how many commits are there?", "count the commits", "number of commits in this repo?",
       "how many commits does this repository have?"], ["what is the commit count?", "how long is the git history?"],
      needs="git"),
    K("git_author", "git log -1 --format=%an", ["{key} made the last commit.", "It was {key}."], first_line,
      ["who made the last commit?", "who committed last?", "author of the last commit?", "who wrote the latest commit?"],
      ["whose commit is the newest?", "which person made the most recent commit?"], needs="git"),
    K("make_folder", "mkdir -p {new}", ["Created the folder {new}.", "Done: {new} exists now."], done,
      ["create a folder called {new}", "make a directory named {new}", "mkdir {new}", "create the folder {new}",
       "make a new folder {new}"], ["set up an empty directory called {new}", "I need a new folder named {new}"],
      check="files", files=lambda root, v: (root / v["new"]).is_dir()),
    K("make_file", "echo '{text}' > {new_file}", ["Created {new_file}.", "Wrote it to {new_file}."], done,
      ["create a file {new_file} containing {text}", "write {text} to a new file {new_file}",
       "make a file {new_file} with {text}", "save {text} in {new_file}"],
      ["put the text {text} into a new file named {new_file}", "create {new_file} and write {text} in it"],
      check="files", files=lambda root, v: (root / v["new_file"]).is_file()
      and (root / v["new_file"]).read_text().strip() == v["text"]),
    K("append_line", "echo '{text}' >> {text_file}", ["Added it to {text_file}.", "{text_file} ends with {text} now."],
      done, ["add the line {text} to {text_file}", "append {text} to {text_file}", "add {text} at the end of {text_file}"],
      ["put {text} as a new last line of {text_file}", "extend {text_file} with the line {text}"],
      check="files", files=lambda root, v: (root / v["text_file"]).read_text().splitlines()[-1:] == [v["text"]]),
    # held-out kinds: each is a new combination of what the others teach
    K("count_folders", "ls -d */ | wc -l", ["There are {key} folders.", "I count {key} folders."], number, [],
      ["how many folders are in this directory?", "count the folders here", "number of subfolders?"], trained_kind=False),
    K("largest_number", "sort -n numbers.txt | tail -n 1", ["The largest number is {key}.", "The maximum is {key}."],
      number, [], ["what is the largest number in numbers.txt?", "find the highest number in numbers.txt",
                   "maximum of numbers.txt?"], needs="numbers", trained_kind=False),
    K("grep_count", "grep -c '{word}' {word_file}", ["{key} lines of {word_file} contain {word}."], number, [],
      ["how many lines of {word_file} contain {word}?", "count the lines with {word} in {word_file}",
       "in how many lines of {word_file} does {word} appear?"], trained_kind=False),
]}


# ---- episodes ----------------------------------------------------------------------------------------------

@dataclass
class Task:
    """One request about one scratch folder."""
    kind: Kind
    request: str
    command: str                     # what does it (the model is not told)
    values: dict                     # the slots filled in

    def answer(self, rng: random.Random, output: str) -> str | None:
        key = self.kind.key(output)
        return None if key is None else rng.choice(self.kind.answers).format(key=key, **self.values)

    def expected(self, output: str) -> str | None:
        """What a correct episode shows, read from the output of the task's own command."""
        return (self.kind.expect or self.kind.key)(output)


def make_task(kind: Kind, rng: random.Random, s: Scratch, held_out_phrasing: bool = False) -> Task | None:
    values = {slot: SLOTS[slot](rng, s) for slot in kind.slots()}
    if any(v is None for v in values.values()):
        return None
    phrasing = rng.choice(kind.held_out if held_out_phrasing else kind.trained)
    return Task(kind, phrasing.format(**values), kind.command.format(**values), values)


def tasks_for(s: Scratch, rng: random.Random, count: int, kinds: list[Kind] | None = None,
              held_out_phrasing: bool = False) -> list[Task]:
    """Up to `count` tasks of different kinds that fit the folder; those that change it come last."""
    kinds = kinds or [k for k in KINDS.values() if k.trained_kind]
    tasks = [t for k in rng.sample(kinds, len(kinds)) if (t := make_task(k, rng, s, held_out_phrasing))][:count]
    return sorted(tasks, key=lambda t: t.kind.check == "files")


def episode(task: Task, result: Result, rng: random.Random) -> dict | None:
    """The conversation that teaches a task, from what its command really printed (None if it failed)."""
    answer = task.answer(rng, result.output) if result.exit_code == 0 else None
    if answer is None:
        return None
    return {"kind": task.kind.name, "messages": [
        {"role": "user", "content": task.request}, {"role": "tool_call", "content": task.command},
        {"role": "tool", "content": result.observation()}, {"role": "assistant", "content": answer}]}


def folder_episodes(seed: int, parent: str, per_folder: int = 6) -> list[dict]:
    """Episodes about one new scratch folder, run one after another in it as an agent would."""
    rng = random.Random(seed)
    s = make_scratch(rng, Path(parent))
    try:
        sandbox = Sandbox(s.root, limits=Limits(seconds=5))
        return [e for task in tasks_for(s, rng, per_folder) if (e := episode(task, sandbox.run(task.command), rng))]
    finally:
        shutil.rmtree(s.root, ignore_errors=True)


def generate_episodes(n: int, seed: int = 0, workers: int | None = None, per_folder: int = 6) -> list[dict]:
    """n episodes over about n / per_folder scratch folders, on all cores, shuffled."""
    episodes, first = [], seed * 1_000_000
    with tempfile.TemporaryDirectory(prefix="nimllm-skills-") as parent, \
            ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        while len(episodes) < n:
            batch = range(first, first + (n - len(episodes)) // (per_folder - 1) + 1)   # a few fail or do not fit
            for found in pool.map(folder_episodes, batch, [parent] * len(batch), [per_folder] * len(batch)):
                episodes += found
            first += len(batch)
    random.Random(seed).shuffle(episodes)
    return episodes[:n]


def write_corpus(path: Path, n: int, seed: int = 0, log=print) -> Path:
    """The agent-skill corpus as JSONL ({"messages": [...], "kind": ...} per line), written once: a
    corpus that stays the same file lets an interrupted training resume on it."""
    return write_jsonl_once(path, lambda: generate_episodes(n, seed),
                            f"{n:,} agent-skill episodes (real commands in scratch folders)", log)


def corpus_for(model_root: Path, n: int, seed: int = 0, log=print) -> Path:
    """The agent-skill corpus of a model folder (`nimllm train --agent-skills N`), made on first use."""
    return write_corpus(Path(model_root) / "agent-skills" / f"episodes-{n}-seed{seed}.jsonl", n, seed, log)
