"""The agent-skill corpus: episodes of everyday shell work, run for real, to teach a model tools.

A model trained on books has never seen a tool call. Each episode here is a request (put together
from parts: nimllm/tasks.py), the command that does it, what that command really printed in a
scratch folder full of random names and contents (nimllm/vocab.py: too many to learn, so they must be
copied), run by nimllm/sandbox.py as the agent runs them (without bubblewrap since they are our own),
and an answer that carries what it printed. Some episodes go wrong first, as work does: a command
fails on a file named without its folder ("No such file"), `find` shows where it is, and the command
runs on that path; a first command slips on a file's name, fails, and runs again on the name the
request gave; a `grep` on a folder fails and runs again with `-r`. A file the request describes
("my shopping list") is looked for first: `ls` of its folder shows its name. Some find nothing (a file the
folder does not have, a word no file holds) and the answer says so. Every request about the folder
is answered from a command, never from memory.

    rng = random.Random(0); episodes = folder_episodes(0, "/tmp")
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nimllm import vocab
from nimllm.fileio import write_jsonl_once
from nimllm.sandbox import Limits, Sandbox
from nimllm.tasks import KINDS, Request
from nimllm.turns import agent_mode
from nimllm.vocab import WORDS, made_up

# Names come from large vocabularies, and a quarter are made up, so that a model cannot know a
# folder's names in advance: it must copy them from the request and the output.
STEMS = ("notes report todo main utils config data readme server client app setup index style draft budget "
         "letter recipe plan summary invoice schedule backup history list results chapter journal diary essay "
         "thesis poem story novel lyrics song playlist album photo picture image logo icon banner avatar "
         "resume cover contract agreement lease receipt statement payslip taxes expenses income savings loan "
         "mortgage insurance warranty manual guide tutorial lesson lecture homework exam quiz syllabus grades "
         "timetable calendar agenda minutes meeting memo proposal pitch deck slides outline brief spec design "
         "mockup wireframe prototype roadmap backlog sprint release changelog version patch hotfix bugfix "
         "feature test tests fixture sample example demo template boilerplate skeleton layout theme palette "
         "fonts colors header footer sidebar menu navbar form login signup profile account settings preferences "
         "options defaults env secrets keys tokens routes views models schema migration seed query queries "
         "report2 stats metrics analytics dashboard chart graph table inventory stock orders customers clients "
         "vendors suppliers products catalog prices quotes sales leads contacts addresses phonebook birthdays "
         "friends family guests invitations wedding party holiday vacation trip travel itinerary packing "
         "shopping groceries pantry menu2 meals diet workout training running cycling garden plants seeds "
         "weather notes2 ideas thoughts dreams goals habits reading books movies music podcast episode script "
         "screenplay scene dialogue characters world map atlas route directions hiking camping fishing "
         "recipes soup bread pasta salad cake cookies curry pizza coffee tea wine beer cocktail snack "
         "server2 worker scheduler queue cache proxy gateway router handler controller service helper "
         "parser lexer compiler runner loader exporter importer converter formatter validator checker "
         "scanner crawler scraper bot agent monitor logger tracker counter timer clock alarm reminder "
         "deploy build install update upgrade cleanup migrate backup2 restore sync upload download "
         "archive export import report_final draft2 final old new temp scratch misc stuff things").split()
FOLDERS = ("src docs data logs tests scripts notes assets backup archive reports drafts build tmp journal "
           "recipes blog posts pages site public static images img css js fonts media audio video photos "
           "music downloads uploads inbox outbox mail letters invoices receipts taxes finance work school "
           "homework projects personal private shared team clients vendors config conf etc lib bin tools "
           "utils vendor third_party examples samples templates themes layouts components widgets models "
           "views controllers routes api db migrations fixtures results output out dist release old new "
           "2024 2025 2026 q1 q2 q3 q4 january march june october drafts2 ideas travel garden kitchen").split()
EXTENSIONS = (".txt .md .py .log .csv .json .sh .html .yaml .css .js .ts .xml .toml .ini .cfg .conf .sql "
              ".c .h .go .rs .rb .java .tsv .rst .tex .dat .bak .svg .png .jpg .pdf").split()
BINARY = {".png", ".jpg", ".pdf", ".dat"}
FORMATTERS = {".py": lambda r: "\n".join(f"def {r.choice(WORDS)}_{r.choice(WORDS)}():\n    return {r.randint(0, 99)}"
                                         for _ in range(r.randint(1, 6))),
              ".log": lambda r: "\n".join(f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} {r.randint(0, 23):02d}:"
                                          f"{r.randint(0, 59):02d} {r.choice(['INFO', 'INFO', 'WARNING', 'ERROR'])} "
                                          f"{r.choice(WORDS)} {r.choice(WORDS)}" for _ in range(r.randint(3, 25))),
              ".csv": vocab.table, ".json": lambda r: json.dumps(vocab.settings(r), indent=2)}
STRUCTURED = (".csv", ".json")   # files a line added to would break
DAY = 86400


def prose(rng: random.Random, long: bool = False) -> str:
    lines = rng.randint(40, 200) if long else rng.randint(2, 20)
    return "\n".join(" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(lines))


def stem(rng: random.Random) -> str:
    return vocab.stem(rng, STEMS)


def folder_name(rng: random.Random) -> str:
    return rng.choice(FOLDERS) if rng.random() < 0.5 else vocab.stem(rng, FOLDERS)


def search_word(rng: random.Random) -> str:
    """A word some files hold and a request may look for: 'socket', 'Breakpoint', 'TIMEOUT', 'zorvek'."""
    return rng.choice([vocab.word, vocab.word, lambda r: vocab.word(r).capitalize(), lambda r: vocab.word(r).upper(),
                       made_up])(rng)


def file_name(rng: random.Random, ext: str | None = None) -> str:
    """'notes.md', 'report_river.txt', 'budget3.csv', 'journal-2026-03-14.md', 'vostex.png' (ext "": a folder's)"""
    suffix = rng.choice(["", "", "", f"_{rng.choice(WORDS)}", str(rng.randint(1, 9)),
                         f"-2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", f"_v{rng.randint(2, 4)}"])
    if ext is None:
        ext = rng.choice(EXTENSIONS[:9] if rng.random() < 0.6 else EXTENSIONS)
    return stem(rng) + suffix + ext


def contents(rng: random.Random, ext: str, keyword: str) -> str | bytes:
    """What a file of this kind holds: bytes for images and data, text with the folder's keyword in some."""
    if ext in BINARY:
        return rng.randbytes(rng.choice([rng.randint(0, 2000), rng.randint(2000, 90000)]))
    text = FORMATTERS.get(ext, lambda r: prose(r, long=r.random() < 0.25))(rng)
    if ext not in STRUCTURED and rng.random() < 0.3:
        text += f"\n{rng.choice(WORDS)} {keyword} {rng.choice(WORDS)}"
    return text + "\n"


@dataclass
class Scratch:
    """A made-up project folder: what was put in it, for requests to be about."""
    root: Path
    files: list[str] = field(default_factory=list)       # relative paths
    folders: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)    # words found in some files and not others
    lists: list[str] = field(default_factory=list)       # one entry a line, with repeats (vocab.entries)
    numbers: list[str] = field(default_factory=list)     # one number a line
    commits: list[str] = field(default_factory=list)     # the git history's messages, oldest first
    git: bool = False
    words: tuple[str, ...] = WORDS                       # what new text is written with
    pair: tuple[str, str] | None = None                  # two versions of one text
    archive: tuple[str, str] | None = None               # a .tar.gz and the folder inside it

    def text_files(self) -> list[str]:
        return [f for f in self.files if Path(f).suffix in (".txt", ".md", ".log", ".csv", ".py")]

    def plain(self) -> list[str]:
        """Text files whose form no request relies on: a commit may add a line to them."""
        return [f for f in self.text_files() if f not in (*self.lists, *self.numbers, *(self.pair or ()))
                and not f.endswith(STRUCTURED)]

    def new_name(self, rng: random.Random, ext: str = "") -> str:
        return next(n for n in (file_name(rng, ext) for _ in range(100)) if not (self.root / n).exists())

    def add(self, rel: str, text: str | bytes, rng: random.Random) -> None:
        """A file, changed some time ago: within the last weeks for some, months ago for the rest."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        age = rng.uniform(0, 20) if rng.random() < 0.4 else rng.uniform(60, 900)
        os.utime(path, (time.time() - age * DAY,) * 2)
        self.files.append(rel)


def make_scratch(rng: random.Random, parent: Path) -> Scratch:
    """Files with random names and contents in random folders (some nested), of many sizes and ages;
    lists with repeats, numbers, a table, a settings file, two versions of a text, an archive; half
    of them git repos with a few commits and some changes since."""
    root = Path(tempfile.mkdtemp(prefix=f"{stem(rng)}-", dir=parent))
    s = Scratch(root, folders=sorted({folder_name(rng) for _ in range(rng.randint(0, 3))}),
                keywords=list(dict.fromkeys(search_word(rng) for _ in range(2))))
    if s.folders and rng.random() < 0.3:
        s.folders.append(f"{s.folders[0]}/{folder_name(rng)}")
    for folder in s.folders:   # some stay empty
        (root / folder).mkdir(parents=True, exist_ok=True)
    for _ in range(rng.randint(0, 2)):   # any name: a list is known by what it holds, not by what it is called
        s.lists.append(s.new_name(rng, rng.choice([".txt", ".txt", ".txt", ".md", ".list"])))
        s.add(s.lists[-1], "\n".join(rng.choices(vocab.entries(rng), k=rng.randint(4, 12))) + "\n", rng)
    if rng.random() < 0.4:
        digits = rng.randint(1, 5)
        s.numbers.append(s.new_name(rng, ".txt"))
        s.add(s.numbers[-1], "\n".join(str(vocab.number(rng, rng.randint(1, digits)))
                                       for _ in range(rng.randint(3, 12))) + "\n", rng)
    names = {file_name(rng) for _ in range(rng.randint(3, 12))}
    for name in sorted(names):
        rel = str(Path(rng.choice([""] + s.folders)) / name)
        s.add(rel, contents(rng, Path(name).suffix, s.keywords[0]), rng)
    if rng.random() < 0.15:
        s.add(str(Path(rng.choice([""] + s.folders)) / f"{stem(rng)}_empty.txt"), "", rng)
    extras(rng, s)
    if rng.random() < 0.5 and shutil.which("git"):
        make_repo(rng, s)
    return s


def extras(rng: random.Random, s: Scratch) -> None:
    """The structured files some requests are about, each in some folders only."""
    if rng.random() < 0.4:
        name = s.new_name(rng, ".csv")
        s.add(name, contents(rng, ".csv", s.keywords[0]), rng)
    if rng.random() < 0.4:
        name = s.new_name(rng, ".json")
        s.add(name, contents(rng, ".json", s.keywords[0]), rng)
    if rng.random() < 0.35:
        old = [" ".join(rng.choices(WORDS, k=rng.randint(3, 7))) for _ in range(rng.randint(3, 9))]
        new = [line if rng.random() < 0.7 else " ".join(rng.choices(WORDS, k=4)) for line in old]
        new[-1] += " " + rng.choice(WORDS)   # at least one line differs
        first = stem(rng)
        s.pair = (f"{first}.txt", f"{first}_{rng.choice(['v2', 'new', 'copy', 'edited'])}.txt")
        s.add(s.pair[0], "\n".join(old) + "\n", rng)
        s.add(s.pair[1], "\n".join(new) + "\n", rng)
    if rng.random() < 0.3:
        inside = folder_name(rng)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name in {stem(rng), stem(rng)}:
                data = prose(rng).encode()
                info = tarfile.TarInfo(f"{inside}/{name}.txt")
                info.size, info.mtime = len(data), 1.7e9
                tar.addfile(info, io.BytesIO(data))
        s.archive = (s.new_name(rng, ".tar.gz"), inside)
        s.add(s.archive[0], buffer.getvalue(), rng)


def make_repo(rng: random.Random, s: Scratch) -> None:
    if not s.plain():
        return
    author = vocab.person(rng)
    env = {**os.environ, "GIT_AUTHOR_NAME": author, "GIT_COMMITTER_NAME": author, "GIT_AUTHOR_EMAIL": "a@b.c",
           "GIT_COMMITTER_EMAIL": "a@b.c", "GIT_CONFIG_GLOBAL": "/dev/null"}
    git = lambda *args: subprocess.run(["git", *args], cwd=s.root, env=env, check=True, capture_output=True)  # noqa: E731
    git("init", "-q", "-b", "main")
    s.commits = [vocab.commit_message(rng) for _ in range(rng.randint(1, 5))]
    for message in s.commits:
        (s.root / rng.choice(s.plain())).open("a").write(f"{rng.choice(WORDS)}\n")
        git("add", "-A")
        git("commit", "-q", "-m", message)
    for rel in rng.sample(s.plain(), min(len(s.plain()), rng.randint(0, 2))):
        (s.root / rel).open("a").write(f"{rng.choice(WORDS)}\n")
    s.git = True


# ---- episodes ----------------------------------------------------------------------------------------------

def requests_for(s: Scratch, rng: random.Random, count: int, kinds=None) -> list[Request]:
    """Up to `count` requests of different kinds that fit the folder; those that change it come last."""
    kinds = kinds or list(KINDS.values())
    made = [r for k in rng.sample(kinds, len(kinds)) if (r := k.make(rng, s))][:count]
    return sorted(made, key=lambda r: r.check == "files")


MISSING = 0.08   # the share of requests about a file that ask for one the folder does not have
NOT_FOUND = ["There is no {name} in this folder.", "I found no file named {name} here.",
             "{name} does not exist here, not even in a subfolder."]


def named_at_end(request: Request, path: str) -> bool:
    """Whether the request names `path` and its command ends on it (so another path can stand in)."""
    return bool(path) and path in request.text and request.command.endswith(f" {path}")


TYPO = 0.15   # the share of requests about a file whose first command slips on its name (greedy decoding
#              keeps to the likeliest name; what is learned is the way back from a slip)


def slipped(path: str, rng: random.Random, taken: set[str]) -> str | None:
    """`path` with its file's stem slipped as the agent's own copies slip (bench/results/
    agent_103m_h200_corpus4.json: requirements.txt as requires.txt, someday.txt as somewhat.txt, todo.md
    as dodo.md): a letter dropped, doubled or changed, two swapped, or the stem cut short. None when each
    try names a file that is there."""
    folder, base = os.path.split(path)
    stem, dot, ext = base.partition(".")
    for _ in range(10):
        i = rng.randrange(len(stem))
        slip = rng.choice([stem[:i] + stem[i + 1:], stem[:i + 1] + stem[i:],
                           stem[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + stem[i + 1:],
                           stem[:i] + stem[i + 1:i + 2] + stem[i] + stem[i + 2:], stem[:max(2, len(stem) * 2 // 3)]])
        wrong = os.path.join(folder, slip + dot + ext)
        if slip and slip != stem and wrong not in taken:
            return wrong
    return None


def detour(request: Request, s: Scratch, rng: random.Random) -> list[tuple[str, bool | str]]:
    """Commands run before the request's own, each with whether it must fail (or what its failure must
    print). `find` only ever looks for a file after a command failed on it ("No such file"): a file in
    a subfolder that the user names without its folder; the request's command then runs on the path
    found. A search of a folder without -r fails ("Is a directory"), and runs again with it."""
    path = str(request.values.get("file", ""))
    base = Path(path).name
    unique = sum(Path(f).name == base for f in s.files) == 1
    if "/" in path and unique and named_at_end(request, path) and rng.random() < 0.7:
        request.text = request.text.replace(path, base)
        return [(request.command.removesuffix(path) + base, "No such file"), (f"find . -name '{base}'", False)]
    if request.command.startswith("grep -rl ") and rng.random() < 0.1:   # rare: training learns the wrong first try too
        return [(request.command.replace("grep -rl ", "grep -l ").replace(" --exclude-dir=.git", ""), True)]
    return []


def ask_for_a_missing_file(request: Request, s: Scratch, rng: random.Random) -> list[tuple[str, bool | str]]:
    """The request made about a file the folder does not have: its command fails ("No such file"),
    `find` finds the name nowhere (the request's command now), and the answer says so, without a result."""
    path = str(request.values["file"])
    taken = {Path(f).name for f in s.files}
    missing = next(n for n in (file_name(rng, "".join(Path(path).suffixes)) for _ in range(100)) if n not in taken)
    request.text = request.text.replace(path, missing)
    failed = request.command.removesuffix(path) + missing
    template = rng.choice(NOT_FOUND)
    request.command, request.ok_exits, request.values = f"find . -name '{missing}'", (0,), {"file": missing}
    request.answer = lambda out: None if out.strip() else template.format(name=missing)
    return [(failed, "No such file")]


def look_first(request: Request) -> list[tuple[str, bool | str]]:
    """A request that describes its file instead of naming it ("sort my shopping list") lists the folder
    the description places it in: the words say what the file is, not what it is called
    (shopping_list.md? shopping-list.txt?), and a model taught to go straight to the real name made
    names up (bench/results/agent_103m_h200_corpus4.json: "my shopping list" as shopping_v2.txt)."""
    path = str(request.values.get("file", ""))
    if not path or request.said.get("file", path) == path:
        return []
    folder = str(Path(path).parent)
    return [("ls" if folder == "." else f"ls {folder}", False)]


def before(request: Request, s: Scratch, rng: random.Random) -> list[tuple[str, bool | str]]:
    """What runs before the request's own command: the folder's listing where the request describes its
    file; now and then a missing file, or a first command that slips on the file's name (it fails, and
    the command runs again on the name the request gave); else perhaps a detour."""
    if looked := look_first(request):
        return looked
    path = str(request.values.get("file", ""))
    if request.check == "answer" and named_at_end(request, path):
        chance = rng.random()
        if chance < MISSING:
            return ask_for_a_missing_file(request, s, rng)
        if chance < MISSING + TYPO and (wrong := slipped(path, rng, set(s.files))):
            return [(request.command.removesuffix(path) + wrong, "No such file")]
    return detour(request, s, rng)


def episode(request: Request, sandbox: Sandbox, s: Scratch, rng: random.Random) -> dict | None:
    """The conversation that teaches a request, from what its commands really printed; None when a
    command does not do what the episode says of it, or the answer cannot be read from the output."""
    turns, steps = [], [*before(request, s, rng), (request.command, False)]
    for step, (command, fails) in enumerate(steps):
        result = sandbox.run(command)
        if (result.exit_code not in (request.ok_exits if step == len(steps) - 1 else (0,))) != bool(fails):
            return None
        if isinstance(fails, str) and fails not in result.output:
            return None   # it must fail as the episode says (find looks for a file only once one was not found)
        turns += [{"role": "tool_call", "content": command}, {"role": "tool", "content": result.observation()}]
    answer = request.answer(result.output)
    if answer is None or request.verify and not request.verify(s.root):
        return None
    opening = [{"role": role, "content": content} for role, content in agent_mode([("user", request.text)])]
    return {"kind": request.kind, "messages": [*opening, *turns, {"role": "assistant", "content": answer}]}


def folder_episodes(seed: int, parent: str, per_folder: int = 6) -> list[dict]:
    """Episodes about one new scratch folder, run one after another in it as an agent would."""
    rng = random.Random(seed)
    home = Path(tempfile.mkdtemp(prefix=f"{made_up(rng)}-", dir=parent))   # paths differ in every part: none to learn
    try:
        s = make_scratch(rng, home)
        sandbox = Sandbox(s.root, limits=Limits(seconds=5), use_bwrap=False)   # our own commands: 3x quicker unwrapped
        return [e for request in requests_for(s, rng, per_folder) if (e := episode(request, sandbox, s, rng))]
    finally:
        shutil.rmtree(home, ignore_errors=True)


def generate_episodes(n: int, seed: int = 0, workers: int | None = None, per_folder: int = 6) -> list[dict]:
    """n episodes over about n / per_folder scratch folders, on all cores, shuffled."""
    episodes, first = [], seed * 1_000_000
    parent = tempfile.gettempdir()   # not one folder for all: the model would learn its path as "the folder"
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
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


EPISODES_FORMAT = 5   # 2: each episode opens with the agent's mode (turns.agent_mode); 3: open values, find after a
#                       failure only; 4: files described ("my shopping list"), numbers in words, ways within kinds;
#                       5: first commands that slip on a file's name, a described file looked for with ls


def corpus_for(model_root: Path, n: int, seed: int = 0, log=print) -> Path:
    """The agent-skill corpus of a model folder (`nimllm train --agent-skills N`), made on first use."""
    name = f"episodes-{n}-seed{seed}-v{EPISODES_FORMAT}.jsonl"
    return write_corpus(Path(model_root) / "agent-skills" / name, n, seed, log)
