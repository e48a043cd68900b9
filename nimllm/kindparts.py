"""What a kind of shell task (nimllm/tasks.py) is made of: a request's words put together from templates,
macros and slots (with openers, closers and typos), a set of files and the `find` that lists it, the
ways of doing a task (wording, command, answer), and the makers of kinds from them.

    request = simple_kind("count_lines", a_file, ["{HOWMANY} {LINES} does {file} have?"],
                          "wc -l < {file}", ["{file} has {key} lines."], number).make(rng, scratch)
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nimllm import speech
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
    way: str = ""                                 # which of the kind's ways ("": its first)
    said: dict = field(default_factory=dict)      # the values as the request says them ("my shopping list")


@dataclass
class Way:
    """One way of doing a kind's task, with its own wording, command and answers. A kind holds several,
    so that each command part (head or tail after sort, grep -v, sed -n 'A,Bp') is taught in several
    kinds, and a request the corpus never made is a combination of parts it taught."""
    name: str
    questions: list[str]
    command: str
    answers: list[str]
    key: Callable[[str], str | None]
    nothing: list[str] = ()


def pick(rng, first: Way, ways: list[Way]) -> Way:
    """The kind's first way as often as two others: the plain task stays the most common."""
    return rng.choice([first, first, *ways])


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


def fileset_kind(name: str, questions: list[str], pipe: str, answers: list[str], key, filters=None,
                 ways: list[Way] = ()) -> Kind:
    """A kind about a set of files: `find` for the set, then `pipe` (or a way's) on what it lists."""
    def make(rng, s) -> Request | None:
        fs = draw_fileset(rng, s, filters)
        if not fs.matches(s.root):
            return None
        way = pick(rng, Way("", questions, pipe, answers, key), ways)
        v = {"set": fs.noun(rng), "where": fs.where(rng), "said": fs.said()}
        keep = set(re.findall(r"[\w.]+", v["set"] + v["where"])) - set(MACROS)
        return Request(name, phrase(rng, rng.choice(way.questions), keep, **v), fs.find() + way.command,
                       answered(way.answers, way.key, rng, **v), values={"fileset": fs}, way=way.name)
    return Kind(name, make)


def simple_kind(name: str, slots: Callable, questions: list[str], command: str, answers: list[str], key,
                check: str = "answer", verify=None, ok_exits=(0,), nothing: list[str] = (), errors=None,
                ways: list[Way] = ()) -> Kind:
    """A kind whose slots come from `slots(rng, scratch)` (a dict, or None when the folder does not fit),
    said as people say them (nimllm/speech.py: a file by what it is, numbers in words)."""
    def make(rng, s) -> Request | None:
        v = slots(rng, s)
        if v is None:
            return None
        way = pick(rng, Way("", questions, command, answers, key, nothing), ways)
        question = rng.choice(way.questions)
        said = speech.spoken(rng, s, v, question)
        keep = set(" ".join(map(str, said.values())).split())   # no typo in a description's words
        return Request(name, phrase(rng, question, keep, **said), way.command.format(**v),
                       answered(way.answers, way.key, rng, way.nothing, errors, **v), check,
                       verify and holds(verify, v), v, ok_exits, way.name, said)
    return Kind(name, make)


def holds(verify: Callable[[Path, dict], bool], v: dict) -> Callable[[Path], bool]:
    """A check of the folder that is False, not an error, where a file it reads is missing."""
    def check(root: Path) -> bool:
        try:
            return verify(root, v)
        except (OSError, UnicodeDecodeError):
            return False
    return check
