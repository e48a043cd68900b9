"""The kinds of everyday shell task the agent-skill corpus teaches, each assembled from parts.

A request is not one of a kind's few sentences: it is put together from an intent, the object it is
about (a file, a set of files described by extension, name, size, age and place), quantities and
modifiers, in the words of a large table of synonyms, as a question or an order, polite, indirect or
terse, now and then with a typo. The command is put together from matching parts (`find` with
`-name`, `-size`, `-mtime`, `-maxdepth`; pipes into `wc -l`, `sort`, `uniq -c`, `head`, `tail`),
and the answer carries what the command printed. The hand-written requests that bench/agent.py asks
are never read here.

    rng = random.Random(0); request = KINDS["count_files"].make(rng, scratch)
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nimllm import vocab
from nimllm.vocab import CLOSERS, EXT_NOUNS, EXT_WORDS, FILTERS, HERE, I_OPENERS, MACROS, Q_OPENERS, VERBS

# ---- words --------------------------------------------------------------------------------------------

TYPO_RATE = 0.12


def expand(template: str, rng, **values) -> str:
    """A template with its macros, alternatives ([a|b]) and slots filled in."""
    for _ in range(3):   # macros may hold alternatives that hold macros
        template = re.sub(r"\{([A-Z]+)\}", lambda m: MACROS[m[1]], template)
    while "[" in template:   # innermost first
        template = re.sub(r"\[([^\[\]]*)\]", lambda m: rng.choice(m[1].split("|")), template)
    return template.format(**values).replace("  ", " ")


def typo(rng, text: str, keep: set[str]) -> str:
    """One word of four letters or more misspelled (swapped, dropped or doubled letter), never a
    file name or a value the command needs."""
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4 and w not in keep]
    if not spots:
        return text
    i = rng.choice(spots)
    w, j = words[i], rng.randrange(1, len(words[i]) - 1)
    words[i] = rng.choice([w[:j] + w[j + 1] + w[j] + w[j + 2:], w[:j] + w[j + 1:], w[:j] + w[j] + w[j:]])
    return " ".join(words)


def phrase(rng, template: str, keep: set[str] = frozenset(), **values) -> str:
    """A whole request: the core (a question if it ends in '?', else an order) with an opener and a
    closer, sometimes terse (no question mark, no article), sometimes capitalised or misspelled."""
    core = expand(template, rng, **values)
    question = core.endswith("?")
    core = core.rstrip("?")
    opener = rng.choice(I_OPENERS if not question and core.split()[0] in VERBS else Q_OPENERS)
    asks = question or opener.strip() in ("can you", "could you", "would you")
    text = opener + core + rng.choice(CLOSERS) + ("?" if asks and rng.random() < 0.85 else "")
    if rng.random() < 0.15:
        text = re.sub(r"\b(the|a|an) ", "", text)
    if rng.random() < TYPO_RATE:
        text = typo(rng, text, {str(v) for v in values.values()} | keep)
    if rng.random() < 0.3:
        text = text[:1].upper() + text[1:]
    return text


# ---- what a request is about ------------------------------------------------------------------------

def in_place(place: str, rng) -> str:
    if place == ".":
        return rng.choice(HERE)
    return expand(rng.choice([" in {p}", " under {p}", " inside {p}", " in the {p} {FOLDER}", " in {p}/",
                              " within {p}", " (they're in {p})", ", the ones in {p}/", " in my {p} {FOLDER}",
                              " that live in {p}"]), rng, p=place)


@dataclass
class FileSet:
    """Files described as a person describes them, and the `find` that lists them."""
    place: str = "."
    ext: str | None = None
    name_part: str | None = None
    min_kb: int | None = None      # larger than this many KiB (find -size +Nk)
    days: int | None = None        # changed less than this many days ago (find -mtime -N)
    top_only: bool = False         # not in subfolders (find -maxdepth 1)

    def filters(self) -> list[tuple[str, object]]:
        return [(name, getattr(self, name)) for name in FILTERS if getattr(self, name) is not None]

    def find(self) -> str:
        parts = ["find", self.place, *(["-maxdepth 1"] if self.top_only else []), "-type f",
                 *([f"-name '*{self.ext}'"] if self.ext else []),
                 *(FILTERS[name][0].format(value) for name, value in self.filters())]
        if self.place == ".":
            parts.append("-not -path './.git/*'")
        return " ".join(parts)

    def matches(self, root: Path) -> list[str]:
        """The same set, found by Python (what tests check the commands against)."""
        base, now, found = root / self.place, time.time(), []
        for folder, subfolders, files in os.walk(base):
            # nothing in a .git is in the set, so none is walked: half the scratch folders are repositories,
            # and most of their files are in .git
            subfolders[:] = [] if self.top_only else [d for d in subfolders if d != ".git"]
            for p in (Path(folder) / name for name in files):
                if not p.is_file() or p.name == ".git":
                    continue
                if self.ext and not p.name.endswith(self.ext) or self.name_part and self.name_part not in p.name:
                    continue
                if self.min_kb is not None and math.ceil(p.stat().st_size / 1024) <= self.min_kb:
                    continue
                if self.days is not None and (now - p.stat().st_mtime) // 86400 >= self.days:
                    continue
                rel = p.relative_to(base)
                found.append(str(Path(self.place) / rel) if self.place != "." else str(rel))
        return sorted(found)

    def noun(self, rng) -> str:
        """'markdown files', 'python scripts with report in the name bigger than 2 KB', ..."""
        noun = "{FILES}"
        if self.ext:
            word = rng.choice(EXT_WORDS[self.ext])
            noun = rng.choice([f"{word} {{FILES}}", f"{{FILES}} ending in {self.ext}", f"*{self.ext} {{FILES}}",
                               *EXT_NOUNS[self.ext]])
        for name, value in self.filters():
            noun += " " + rng.choice(FILTERS[name][1]).format(value)
        return expand(noun, rng)

    def where(self, rng) -> str:
        place = in_place(self.place, rng)
        if self.top_only:
            place += rng.choice([" (not in subfolders)", " at the top level only", ", not counting subfolders",
                                 " without going into subfolders"])
        return place

    def said(self) -> str:
        """How the answer names the set (plainly, for the model to copy)."""
        parts = [f"{self.ext} files" if self.ext else "files", *(FILTERS[name][2].format(value)
                                                                  for name, value in self.filters())]
        return " ".join(parts + ([f"in {self.place}"] if self.place != "." else []))


def draw_fileset(rng, s, filters: int | None = None) -> FileSet:
    """A set of files in the scratch folder, with up to two filters that some file passes."""
    fs = FileSet(place=rng.choice(["."] * 3 + s.folders))
    files = FileSet(fs.place).matches(s.root)
    if not files:
        return fs
    example = s.root / rng.choice(files)
    for f in rng.sample(["ext", "ext", "name", "size", "days", "top"], rng.choice([0, 1, 1, 1, 2]) if filters is None
                        else filters):
        if f == "ext" and example.suffix in EXT_WORDS:
            fs.ext = example.suffix
        elif f == "name":
            fs.name_part = example.stem.split("_")[0]
        elif f == "size":
            below = math.ceil(example.stat().st_size / 1024) - 1 - rng.randint(0, 1)
            fs.min_kb = below if below >= 1 else None
        elif f == "days":
            age = (time.time() - example.stat().st_mtime) // 86400
            if age < 60:
                fs.days = int(age) + rng.randint(1, 5)
        elif f == "top" and example.parent == s.root / fs.place:
            fs.top_only = True
    return fs


# ---- reading what a command printed ---------------------------------------------------------------------

def lines_of(out: str) -> list[str]:
    return [line.strip().removeprefix("./") for line in out.splitlines() if line.strip()]


def number(out: str) -> str | None:
    found = re.findall(r"-?\d+(?:\.\d+)?", out)
    return found[0] if len(found) == 1 else None


def names(items: list[str]) -> str | None:
    shown = items[:6] + ([f"{len(items) - 6} more"] if len(items) > 6 else [])
    return None if not shown else shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def listing(out: str) -> dict | None:
    """{count} and {names} for an answer such as '3 markdown files: a.md, b.md and c.md'."""
    items = lines_of(out)
    return {"count": len(items), "names": names(items) or "none"}


def first(out: str) -> str | None:
    items = lines_of(out)
    return items[0] if items else None


def last(out: str) -> str | None:
    items = lines_of(out)
    return items[-1] if items else None


def sized_path(out: str) -> str | None:
    """'src/a.py (1234 bytes)' from '1234 ./src/a.py'."""
    size, _, path = (first(out) or "").partition(" ")
    return f"{path.removeprefix('./')} ({size} bytes)" if size.isdigit() and path else None


def quoted(out: str) -> str | None:
    items = lines_of(out)
    return f'"{items[0]}"' if len(items) == 1 else None


def shown(out: str) -> str | None:
    """For output the user reads in the transcript: its first line, named."""
    items = out.strip().splitlines()
    return f'it starts "{items[0].strip()}"' if items and items[0].strip() else "it is empty"


def frequency(out: str) -> str | None:
    count, _, item = (first(out) or "").partition(" ")
    return f"{item.strip()} ({count} times)" if count.isdigit() and item.strip() else None


def git_changes(out: str) -> str:
    items = [line[3:] for line in out.splitlines() if len(line) > 3]
    return f"{len(items)} changed: {names(items)}" if items else "nothing has changed since the last commit"


def done(out: str) -> str:
    return "done"


# ---- kinds ------------------------------------------------------------------------------------------------

@dataclass
class Request:
    """One request about one scratch folder: what the user says, the command that does it, and how to
    answer from its output."""
    kind: str
    text: str
    command: str
    answer: Callable[[str], str | None]           # the answer, from what the command printed (None: none fits)
    check: str = "answer"                         # "answer": it must carry the result; "files": the folder changes
    verify: Callable[[Path], bool] | None = None  # with "files": is the folder as asked?
    values: dict = field(default_factory=dict)
    ok_exits: tuple[int, ...] = (0,)              # exit codes the answer reads (diff 1: differ; grep 1: none; git 128)


@dataclass
class Kind:
    name: str
    make: Callable                    # (rng, scratch) -> Request | None (None: the folder does not fit)


def answered(templates: list[str], key: Callable[[str], str | None], rng, nothing: list[str] = (),
             errors: dict[str, str] | None = None, **values) -> Callable[[str], str | None]:
    """The answer function of a request: one of the templates, with {key} (or the fields of a dict
    key, such as {count} and {names}) read from the output; where the command printed nothing, one
    of `nothing`, and where it printed an error of `errors`, what that error means (a search that
    found nothing, or a command that could not work, says so and makes no result up)."""
    template, empty = rng.choice(templates), rng.choice(nothing or [None])

    def answer(out: str) -> str | None:
        if empty and not out.strip():
            return expand(empty, rng, **values)
        if said := next((said for error, said in (errors or {}).items() if error in out), None):
            return expand(said, rng, **values)
        k = key(out)
        return None if k is None else expand(template, rng, **{**values, **(k if isinstance(k, dict) else {"key": k})})
    return answer


def fileset_kind(name: str, questions: list[str], pipe: str, answers: list[str], key, filters=None) -> Kind:
    """A kind about a set of files: `find` for the set, then `pipe` on what it lists."""
    def make(rng, s) -> Request | None:
        fs = draw_fileset(rng, s, filters)
        if not fs.matches(s.root):
            return None
        v = {"set": fs.noun(rng), "where": fs.where(rng), "said": fs.said()}
        keep = set(re.findall(r"[\w.]+", v["set"] + v["where"])) - set(MACROS)
        return Request(name, phrase(rng, rng.choice(questions), keep, **v), fs.find() + pipe,
                       answered(answers, key, rng, **v), values={"fileset": fs})
    return Kind(name, make)


def simple_kind(name: str, slots: Callable, questions: list[str], command: str, answers: list[str], key,
                check: str = "answer", verify=None, ok_exits=(0,), nothing: list[str] = (), errors=None) -> Kind:
    """A kind whose slots come from `slots(rng, scratch)` (a dict, or None when the folder does not fit)."""
    def make(rng, s) -> Request | None:
        v = slots(rng, s)
        if v is None:
            return None
        return Request(name, phrase(rng, rng.choice(questions), **v), command.format(**v),
                       answered(answers, key, rng, nothing, errors, **v), check, verify and holds(verify, v), v, ok_exits)
    return Kind(name, make)


def holds(verify: Callable[[Path, dict], bool], v: dict) -> Callable[[Path], bool]:
    """A check of the folder that is False, not an error, where a file it reads is missing."""
    def check(root: Path) -> bool:
        try:
            return verify(root, v)
        except (OSError, UnicodeDecodeError):
            return False
    return check


# slot makers: the files of the scratch folder a kind may be about
def a_file(rng, s):
    files = [f for f in s.files if not f.endswith(".tar.gz")]
    return {"file": rng.choice(files)} if files else None


def a_text(rng, s):
    files = s.text_files()
    return {"file": rng.choice(files), "n": rng.randint(2, 6)} if files else None


ABSENT = 0.15   # the share of searches for a word that is not there: they find nothing, and say so


def a_word(rng, s, absent: float = 0.0):
    """A text file and a word in it: the folder's keyword, or any word of the file (its own words are
    searched for too: 'ERROR' in a log); with chance `absent`, a word it does not hold (nothing found)."""
    files = s.text_files()
    if not files:
        return None
    f = rng.choice(files)
    text = (s.root / f).read_text()
    if rng.random() < absent:
        return {"file": f, "word": next(w for w in (vocab.word(rng) for _ in range(100)) if w not in text.lower())}
    words = [s.keywords[0]] * 3 if s.keywords[0] in text else re.findall(r"\b[A-Za-z]{3,}\b", text)
    return {"file": f, "word": rng.choice(words)} if words else None


def word_anywhere(rng, s, absent: float = 0.0):
    """The folder's keyword where a file holds it; with chance `absent`, a word no file holds (nothing found)."""
    if rng.random() < absent:
        held = b"\n".join((s.root / f).read_bytes().lower() for f in s.files)
        word = next((w for w in (vocab.word(rng) for _ in range(20)) if w.encode() not in held), None)
    else:
        word = s.keywords[0] if any(s.keywords[0] in (s.root / f).read_text() for f in s.text_files()) else None
    return word and {"word": word, "where": in_place(".", rng)}


def a_list(rng, s):
    return {"file": rng.choice(s.lists)} if s.lists else None


def numbers(rng, s):
    return {"file": rng.choice(s.numbers)} if s.numbers else None


def a_line_range(rng, s):
    lengths = {f: len((s.root / f).read_text().splitlines()) for f in s.text_files()}
    files = [f for f, n in lengths.items() if n >= 4]
    if not files:
        return None
    f = rng.choice(files)
    total = lengths[f]
    a = rng.randint(1, total - 1)
    return {"file": f, "a": a, "b": rng.randint(a + 1, total), "n": rng.randint(1, total)}


def a_folder(rng, s):
    return {"folder": rng.choice(s.folders)} if s.folders else None


def a_place(rng, s):
    place = rng.choice(["."] + s.folders)
    return {"place": place, "where": in_place(place, rng),
            "name": expand("[this {FOLDER}|the current {FOLDER}]", rng) if place == "." else place}


def new_folder(rng, s):
    return {"new": s.new_name(rng)}


def new_file(rng, s):
    return {"new": s.new_name(rng, rng.choice([".txt", ".md"])), "text": " ".join(rng.sample(s.words, rng.randint(1, 3)))}


def file_and_text(rng, s):
    files = s.text_files()
    return {"file": rng.choice(files), "text": " ".join(rng.sample(s.words, rng.randint(1, 3)))} if files else None


def file_and_folder(rng, s):
    top = [f for f in s.files if "/" not in f]
    return {"file": rng.choice(top), "folder": rng.choice(s.folders)} if top and s.folders else None


def file_and_new(rng, s):
    top = [f for f in s.files if "/" not in f]
    if not top:
        return None
    f = rng.choice(top)
    return {"file": f, "new": s.new_name(rng, Path(f).suffix)}


def replace_word(rng, s):
    v = a_word(rng, s)
    return v and {**v, "other": rng.choice(s.words)}


def the_pair(rng, s):
    return {"a": s.pair[0], "b": s.pair[1]} if s.pair else None


def the_csv(rng, s, numeric: bool = False):
    """A csv file and one of its columns (`numeric`: one of whole numbers), from the file's own header."""
    tables = [f for f in s.files if f.endswith(".csv")]
    if not tables:
        return None
    f = rng.choice(tables)
    header, *rows = [line.split(",") for line in (s.root / f).read_text().splitlines()]
    columns = [i for i, name in enumerate(header) if all(len(row) == len(header) for row in rows)
               and (not numeric or all(row[i].isdigit() for row in rows))]
    if not rows or not columns:
        return None
    i = rng.choice(columns)
    return {"file": f, "column": header[i], "i": i + 1}


def the_json(rng, s):
    files = [f for f in s.files if f.endswith(".json")]
    if not files:
        return None
    f = rng.choice(files)
    data = json.loads((s.root / f).read_text())
    return {"file": f, "field": rng.choice(sorted(data))} if data else None


def the_archive(rng, s):
    return {"file": s.archive[0], "inside": s.archive[1]} if s.archive else None


def folder_to_archive(rng, s):
    return {"folder": rng.choice(s.folders), "new": s.new_name(rng, ".tar.gz")} if s.folders else None


NOT_A_REPO = 0.15   # the share of folders without git where a git request is made anyway: git fails, the answer says why


def git(rng, s):
    return {"n": rng.randint(2, 4)} if s.git or rng.random() < NOT_A_REPO else None


def git_kind(name: str, questions: list[str], command: str, answers: list[str], key) -> Kind:
    """A kind about the folder's git history: outside a repository git fails (128), and the answer says so."""
    return simple_kind(name, git, questions, command, answers, key, ok_exits=(0, 128), errors={
        "not a git repository": "[This folder is not a git repository|There is no git repository here], so git "
                                "[has nothing to show|cannot tell]."})


def nothing(rng, s):
    return {}


def sums(rng, s):
    a, b = vocab.number(rng), vocab.number(rng)
    op, word = rng.choice([("+", "[plus|and|+]"), ("-", "[minus|take away|-]"), ("*", "[times|multiplied by|*|x]")])
    return {"a": a, "b": b, "op": op, "opword": expand(word, rng)}


def percent(rng, s):
    return {"p": rng.choice([5, 10, 15, 20, 25, 50, 75, rng.randint(1, 100)]), "a": vocab.number(rng)}


def exists_dir(root: Path, v) -> bool:
    return (root / v["new"]).is_dir()


KIND_LIST = [
    # -- sets of files: count, list, largest, newest, total size ...
    fileset_kind("count_files", ["{HOWMANY} {set} are there{where}?", "{COUNT} the {set}{where}",
                                 "{HOWMANY} {set}{where}?", "{TELL} {HOWMANY} {set} I have{where}",
                                 "what's the count of {set}{where}?", "number of {set}{where}"],
                 " | wc -l", ["[There are|I count|I found] {key} {said}.", "{key} {said}."], number),
    fileset_kind("list_files", ["{SHOW} the {set}{where}", "{WHICH} {set} are there{where}?", "{FIND} all {set}{where}",
                                "what {set} do I have{where}?", "names of the {set}{where}?", "{set}{where}?"],
                 "", ["{count} {said}: {names}.", "[Found|There are] {count} {said}: {names}."], listing),
    fileset_kind("largest_file", ["{WHICH} is the {BIG} of the {set}{where}?", "{FIND} the {BIG} {set}{where}",
                                  "{WHICH} {set}{where} takes the most space?", "{BIG} {set}{where}?"],
                 " -printf '%s %p\\n' | sort -n | tail -n 1", ["The {BIG} is {key}.", "{key} is the {BIG}."], sized_path),
    fileset_kind("newest_file", ["{WHICH} is the {NEW} of the {set}{where}?", "{FIND} the {NEW} {set}{where}",
                                 "{WHICH} {set}{where} changed last?", "{NEW} {set}{where}?"],
                 " -printf '%T@ %p\\n' | sort -n | tail -n 1 | cut -d' ' -f2-", ["The {NEW} is {key}.",
                                                                                "{key} changed last."], first),
    fileset_kind("total_size", ["how much space do the {set}{where} take?", "total size of the {set}{where}?",
                                "{HOWMANY} bytes do the {set}{where} use [together|in all|combined]?",
                                "add up the sizes of the {set}{where}"],
                 " -printf '%s\\n' | awk '{s+=$1} END {print s+0}'", ["{key} bytes in all.",
                                                                          "The {said} take {key} bytes."], number),
    fileset_kind("total_lines", ["{HOWMANY} {LINES} are in the {set}{where} [together|in total|combined]?",
                                 "total line count of the {set}{where}", "{COUNT} all {LINES} of the {set}{where}"],
                 " -print0 | xargs -0 cat | wc -l", ["{key} lines in all.", "The {said} have {key} lines together."], number),
    simple_kind("find_file", lambda r, s: {"base": Path(r.choice(s.files)).name} if s.files else None,
                ["where is {base}?", "{FIND} {base}", "where can I find {base}?", "which {FOLDER} has {base}?",
                 "path of {base}?", "where did I put {base}?"], "find . -name '{base}'",
                ["{base} is at {key}.", "Found it: {key}."], lambda out: names(lines_of(out))),
    simple_kind("find_name_part", lambda r, s: {"part": Path(r.choice(s.files)).stem.split("_")[0]} if s.files else None,
                ["{FIND} {FILES} with {part} in the name", "{WHICH} {FILES} are named like {part}?",
                 "any {FILES} called something with {part}?", "{SHOW} {FILES} whose name contains {part}"],
                "find . -name '*{part}*' -not -path './.git/*'", ["{count} [found|match]: {names}."], listing),
    simple_kind("count_folders", a_place, ["{HOWMANY} {FOLDER}s are there{where}?", "{COUNT} the {FOLDER}s{where}",
                                           "{HOWMANY} subfolders{where}?"],
                "find {place} -mindepth 1 -type d -not -path '*/.git*' | wc -l", ["{key} folders in {name}."], number),
    simple_kind("list_folders", a_place, ["{WHICH} {FOLDER}s are there{where}?", "{SHOW} the subfolders{where}",
                                          "list the {FOLDER}s{where}"],
                "find {place} -mindepth 1 -type d -not -path '*/.git*'", ["{count} folders: {names}."], listing),
    simple_kind("list_here", nothing, ["{SHOW} what is here", "what's in this {FOLDER}?", "ls",
                                       "{SHOW} the contents of this {FOLDER}", "what {FILES} are here?"],
                "ls", ["{count} [entries|items]: {names}.", "Here: {names}."], listing),
    simple_kind("list_folder", a_folder, ["what is in {folder}?", "{SHOW} the contents of {folder}",
                                          "what's inside the {folder} {FOLDER}?", "ls {folder}"],
                "ls {folder}", ["{folder} has {count}: {names}."], listing),
    # -- one file: lines, words, bytes; parts of it
    simple_kind("count_lines", a_file, ["{HOWMANY} {LINES} does {file} have?", "{COUNT} the {LINES} in {file}",
                                        "line count of {file}?", "how long is {file} in lines?", "wc -l {file}",
                                        "{HOWMANY} {LINES} are in {file}?"],
                "wc -l < {file}", ["{file} has {key} lines.", "{key} lines."], number),
    simple_kind("count_words", a_text, ["{HOWMANY} {WORDS} are in {file}?", "{COUNT} the {WORDS} in {file}",
                                        "word count of {file}[ please|]", "how long is {file} in words?"],
                "wc -w < {file}", ["{file} has {key} words.", "{key} words."], number),
    simple_kind("file_size", a_file, ["how big is {file}?", "what size is {file}?", "{HOWMANY} bytes is {file}?",
                                      "size of {file}?", "how large is {file}?"],
                "wc -c < {file}", ["{file} is {key} bytes.", "{key} bytes."], number),
    simple_kind("show_file", a_text, ["{SHOW} {file}", "what does {file} say?", "cat {file}", "open {file}",
                                      "read {file} to me", "what's in {file}?"],
                "cat {file}", ["That is {file}: {key}.", "Shown above; {key}."], shown),
    simple_kind("head_lines", a_text, ["{SHOW} the first {n} {LINES} of {file}", "first {n} {LINES} of {file}?",
                                       "head of {file}", "top {n} {LINES} of {file}"],
                "head -n {n} {file}", ["The first lines of {file}: {key}.", "Above; {key}."], shown),
    simple_kind("tail_lines", a_text, ["{SHOW} the last {n} {LINES} of {file}", "last {n} {LINES} of {file}?",
                                       "tail of {file}", "bottom {n} {LINES} of {file}", "end of {file}"],
                "tail -n {n} {file}", ["The last lines of {file}: {key}.", "Above; {key}."], shown),
    simple_kind("first_line", a_text, ["what is the first line of {file}?", "{SHOW} the first line of {file}",
                                       "how does {file} start?", "line 1 of {file}?"],
                "head -n 1 {file}", ["The first line of {file} is {key}.", "It starts with {key}."], quoted),
    simple_kind("last_line", a_text, ["what is the last line of {file}?", "{SHOW} the last line of {file}",
                                      "how does {file} end?", "final line of {file}?"],
                "tail -n 1 {file}", ["The last line of {file} is {key}.", "It ends with {key}."], quoted),
    simple_kind("line_n", a_line_range, ["what is line {n} of {file}?", "{SHOW} line {n} of {file}",
                                         "line number {n} in {file}?", "what does line {n} of {file} say?"],
                "sed -n '{n}p' {file}", ["Line {n} of {file} is {key}.", "It says {key}."], quoted),
    # -- searching text
    simple_kind("grep_files", lambda r, s: word_anywhere(r, s, ABSENT), ["{WHICH} {FILES} {CONTAINS} {word}?", "{FIND} the {FILES} that {CONTAINS} {word}",
                                              "where does {word} appear?", "grep for {word}",
                                              "search {word}{where}", "{WHICH} {FILES} say {word}?"],
                "grep -rl '{word}' . --exclude-dir=.git", ["{word} is in {count} files: {names}.", "{names}."], listing,
                ok_exits=(0, 1), nothing=["No file here mentions {word}.", "{word} is in no file."]),
    simple_kind("grep_count_files", lambda r, s: word_anywhere(r, s, ABSENT), ["{HOWMANY} {FILES} {CONTAINS} {word}?",
                                                    "in {HOWMANY} {FILES} does {word} appear?",
                                                    "{COUNT} the {FILES} that mention {word}"],
                "grep -rl '{word}' . --exclude-dir=.git | wc -l", ["{key} files mention {word}."], number),
    simple_kind("grep_lines", lambda r, s: a_word(r, s, ABSENT), ["{SHOW} the {LINES} of {file} that {CONTAINS} {word}",
                                       "{WHICH} {LINES} of {file} mention {word}?", "{FIND} {word} in {file}",
                                       "grep {word} in {file}", "on what line of {file} is {word}?"],
                "grep -n '{word}' {file}", ["{word} is on line {key} of {file}.", "Line {key}."],
                lambda out: names(re.findall(r"^(\d+):", out, re.M)), ok_exits=(0, 1),
                nothing=["{word} is not in {file}.", "No line of {file} has {word}."]),
    simple_kind("grep_count", lambda r, s: a_word(r, s, ABSENT), ["{HOWMANY} {LINES} of {file} {CONTAINS} {word}?",
                                       "{COUNT} the {LINES} with {word} in {file}",
                                       "in {HOWMANY} {LINES} of {file} does {word} appear?"],
                "grep -c '{word}' {file}", ["{key} lines of {file} contain {word}.", "{key}."], number, ok_exits=(0, 1)),
    simple_kind("grep_everywhere", lambda r, s: word_anywhere(r, s, ABSENT), ["{SHOW} every line that mentions {word}{where}",
                                                   "{FIND} all {LINES} with {word}{where}, with line numbers"],
                "grep -rn '{word}' . --exclude-dir=.git", ["{count} lines mention {word}; shown above."], listing,
                ok_exits=(0, 1), nothing=["Nothing here mentions {word}.", "No line mentions {word}."]),
    simple_kind("grep_ignore_case", lambda r, s: a_word(r, s, ABSENT), ["{FIND} {word} in {file}, ignoring case",
                                             "{WHICH} {LINES} of {file} have {word} in any case?"],
                "grep -in '{word}' {file}", ["Lines {key}."], lambda out: names(re.findall(r"^(\d+):", out, re.M)),
                ok_exits=(0, 1), nothing=["{word} is not in {file}, in any case."]),
    # -- lists of lines: sort, unique, frequencies, numbers
    simple_kind("sort_lines", a_list, ["sort {file}", "{SHOW} {file} sorted", "put {file} in [alphabetical|A to Z] order",
                                       "{file} in order please"], "sort {file}", ["Sorted, {key}."], shown),
    simple_kind("first_sorted", a_list, ["{WHICH} entry of {file} comes first alphabetically?",
                                         "first line of {file} in [A to Z|alphabetical] order?"],
                "sort {file} | head -n 1", ["{key} comes first."], first),
    simple_kind("unique_lines", a_list, ["{SHOW} the [unique|distinct|different] entries of {file}",
                                         "{file} without [duplicates|repeats]", "dedupe {file}"],
                "sort -u {file}", ["The distinct entries: {key}."], lambda out: names(lines_of(out))),
    simple_kind("count_unique", a_list, ["{HOWMANY} [unique|distinct|different] entries are in {file}?",
                                         "{COUNT} the distinct lines of {file}"],
                "sort -u {file} | wc -l", ["{key} distinct entries."], number),
    simple_kind("most_common", a_list, ["{WHICH} entry appears most [often|] in {file}?",
                                        "most [common|frequent] line in {file}?", "what comes up most in {file}?"],
                "sort {file} | uniq -c | sort -rn | head -n 1", ["{key} is the most common."], frequency),
    simple_kind("frequencies", a_list, ["how often does each entry of {file} appear?", "frequency of each line in {file}",
                                        "{COUNT} each [entry|value] in {file}"],
                "sort {file} | uniq -c | sort -rn", ["Most often: {key}."], frequency),
    simple_kind("sort_numbers", numbers, ["sort {file} [numerically|by value|smallest first]",
                                          "{SHOW} the numbers in {file} in order"], "sort -n {file}",
                ["In order, {key}."], shown),
    simple_kind("min_number", numbers, ["what is the {SMALL} number in {file}?", "[lowest|minimum] value in {file}?",
                                        "{FIND} the smallest number in {file}"], "sort -n {file} | head -n 1",
                ["The smallest is {key}.", "{key}."], number),
    simple_kind("max_number", numbers, ["what is the largest number in {file}?", "[highest|maximum] value in {file}?",
                                        "{FIND} the biggest number in {file}"], "sort -n {file} | tail -n 1",
                ["The largest is {key}.", "{key}."], number),
    simple_kind("sum_numbers", numbers, ["add up the numbers in {file}", "what is the [sum|total] of {file}?",
                                         "total of the numbers in {file}?"], "awk '{{s+=$1}} END {{print s}}' {file}",
                ["They add up to {key}.", "The total is {key}."], number),
    # -- changing files and folders
    simple_kind("make_folder", new_folder, ["{MAKE} a {FOLDER} called {new}", "mkdir {new}", "new {FOLDER} {new}",
                                            "I need a {FOLDER} named {new}"], "mkdir -p {new}",
                ["Created {new}.", "Done: {new} exists now."], done, check="files", verify=exists_dir),
    simple_kind("make_file", new_file, ["{MAKE} a file {new} [containing|with] {text}", "write {text} to a new file {new}",
                                        "save {text} in {new}", "put {text} into {new}"], "echo '{text}' > {new}",
                ["Created {new}.", "Wrote it to {new}."], done, check="files",
                verify=lambda root, v: (root / v["new"]).is_file() and (root / v["new"]).read_text().strip() == v["text"]),
    simple_kind("append_line", file_and_text, ["add the line {text} to {file}", "append {text} to {file}",
                                               "add {text} at the end of {file}"], "echo '{text}' >> {file}",
                ["Added it to {file}.", "{file} ends with {text} now."], done, check="files",
                verify=lambda root, v: (root / v["file"]).read_text().splitlines()[-1:] == [v["text"]]),
    simple_kind("copy_file", file_and_new, ["copy {file} to {new}", "make a copy of {file} called {new}",
                                            "duplicate {file} as {new}"], "cp {file} {new}",
                ["Copied {file} to {new}."], done, check="files",
                verify=lambda root, v: (root / v["new"]).read_bytes() == (root / v["file"]).read_bytes()),
    simple_kind("rename_file", file_and_new, ["rename {file} to {new}", "change the name of {file} to {new}",
                                              "call {file} {new} instead"], "mv {file} {new}",
                ["Renamed {file} to {new}."], done, check="files",
                verify=lambda root, v: (root / v["new"]).exists() and not (root / v["file"]).exists()),
    simple_kind("move_file", file_and_folder, ["move {file} into {folder}", "put {file} in the {folder} {FOLDER}",
                                               "mv {file} to {folder}"], "mv {file} {folder}/",
                ["Moved {file} into {folder}."], done, check="files",
                verify=lambda root, v: (root / v["folder"] / v["file"]).exists() and not (root / v["file"]).exists()),
    simple_kind("replace_text", replace_word, ["replace {word} with {other} in {file}",
                                               "change every {word} in {file} to {other}",
                                               "in {file}, swap {word} for {other}"], "sed -i 's/{word}/{other}/g' {file}",
                ["Replaced {word} with {other} in {file}."], done, check="files",
                verify=lambda root, v: v["word"] not in (root / v["file"]).read_text()
                and v["other"] in (root / v["file"]).read_text()),
    # -- comparing, structured files, archives
    simple_kind("diff_files", the_pair, ["what's the difference between {a} and {b}?", "diff {a} and {b}",
                                         "compare {a} with {b}", "how do {a} and {b} differ?"], "diff {a} {b}",
                ["They differ: {key}."], lambda out: first(out) and f"{len(re.findall(r'^[<>]', out, re.M))} lines differ",
                ok_exits=(1,)),
    simple_kind("json_field", the_json, ["what is the {field} in {file}?", "read {field} from {file}",
                                         "{SHOW} the {field} field of {file}", "value of {field} in {file}?"],
                "python3 -c \"import json; print(json.load(open('{file}'))['{field}'])\"",
                ["The {field} is {key}.", "{field}: {key}."], first),
    simple_kind("csv_column", the_csv, ["{SHOW} the {column} column of {file}", "list the {column}s in {file}",
                                        "what {column}s are in {file}?"], "cut -d, -f{i} {file} | tail -n +2",
                ["The {column}s: {key}."], lambda out: names(lines_of(out))),
    simple_kind("csv_rows", the_csv, ["{HOWMANY} rows does {file} have, not counting the header?",
                                      "{HOWMANY} records are in {file}?", "{COUNT} the entries in {file}"],
                "tail -n +2 {file} | wc -l", ["{file} has {key} rows.", "{key} records."], number),
    simple_kind("csv_sum", lambda r, s: the_csv(r, s, numeric=True),
                ["what is the total {column} in {file}?", "add up the {column} column of {file}",
                 "sum of {column} in {file}?"], "awk -F, 'NR>1 {{s+=${i}}} END {{print s}}' {file}",
                ["The {column} column adds up to {key}.", "{column} adds up to {key}."], number),
    simple_kind("archive_list", the_archive, ["what's inside {file}?", "list the contents of {file}",
                                              "which files are in the archive {file}?"], "tar -tzf {file}",
                ["{file} holds {count}: {names}."], listing),
    simple_kind("archive_extract", the_archive, ["extract {file}", "unpack {file} here", "unzip {file}",
                                                 "open up the archive {file}"], "tar -xzf {file}",
                ["Extracted {file}."], done, check="files", verify=lambda root, v: (root / v["inside"]).is_dir()),
    simple_kind("archive_make", folder_to_archive, ["[archive|compress|pack up] {folder} into {new}",
                                                    "make a tarball {new} of {folder}", "zip {folder} up as {new}"],
                "tar -czf {new} {folder}", ["Packed {folder} into {new}."], done, check="files",
                verify=lambda root, v: (root / v["new"]).is_file()),
    # -- git
    git_kind("git_status", ["are there uncommitted changes?", "git status", "what changed since the last commit?",
                            "is the working tree clean?", "anything to commit?", "{WHICH} {FILES} did I modify?"],
             "git status --short", ["Git says {key}.", "{key}."], git_changes),
    git_kind("git_last_commit", ["what was the last commit?", "{SHOW} the last commit message",
                                 "latest commit?", "what did the most recent commit say?"],
             "git log -1 --format=%s", ["The last commit is {key}.", "It was {key}."], quoted),
    git_kind("git_log", ["{SHOW} the last {n} commits", "recent git history", "git log please",
                         "what were the last {n} commits?"], "git log --oneline -n {n}",
             ["The latest: {key}."], lambda out: names([line.split(" ", 1)[-1] for line in lines_of(out)])),
    git_kind("git_count", ["{HOWMANY} commits are there?", "{COUNT} the commits", "number of commits in this repo?"],
             "git rev-list --count HEAD", ["There are {key} commits.", "{key} commits."], number),
    git_kind("git_author", ["who made the last commit?", "who committed last?", "author of the latest commit?"],
             "git log -1 --format=%an", ["{key} made the last commit."], first),
    # -- the machine: date, folder, disk, arithmetic
    simple_kind("date_full", nothing, ["what is the date today?", "today's date?", "what's the date?", "date please"],
                "date +%F", ["Today is {key}.", "It is {key}."], first),
    simple_kind("date_day", nothing, ["what day is it?", "which day of the week is it?", "is it friday yet?"],
                "date +%A", ["Today is {key}.", "It is {key}."], first),
    simple_kind("date_time", nothing, ["what time is it?", "the time please", "current time?", "what's the time now?"],
                "date +%H:%M", ["It is {key}.", "The time is {key}."], first),
    simple_kind("where_am_i", nothing, ["where am I?", "what folder is this?", "pwd", "which directory am I in?",
                                "current path?"], "pwd", ["You are in {key}.", "{key}."], first),
    simple_kind("disk_use", a_place, ["how much space does {name} take?", "disk use of {name}?", "how big is {name}?",
                              "size of {name}?"], "du -sh {place}",
             ["{name} takes {key}.", "{key}."], lambda out: first(out) and first(out).split()[0]),
    simple_kind("arithmetic", sums, ["what is {a} {opword} {b}?", "calculate {a} {opword} {b}", "{a} {op} {b}?",
                             "compute {a} {opword} {b}", "work out {a} {opword} {b}"], "echo $(({a} {op} {b}))",
             ["{a} {op} {b} is {key}.", "{key}."], number),
    simple_kind("percentage", percent, ["what is {p}% of {a}?", "{p} percent of {a}?", "calculate {p}% of {a}"],
                "echo $(({a} * {p} / 100))", ["{p}% of {a} is {key}."], number),
]
KINDS = {k.name: k for k in KIND_LIST}
