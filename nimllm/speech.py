"""How people name what a request is about: a file by what it is ("my shopping list", "the README",
"the log in logs") where no other file of the folder fits those words, small numbers in words ("the
first two lines") and places by ordinals ("the 3rd line"). nimllm/tasks.py phrases a request with
these; its command and answer keep the real names, after a listing of the folder (skills.look_first),
so the model learns to map a description onto a file it has seen listed (a model taught only named
files did none of the described ones: its failures are classified in
bench/results/agent_103m_h200_first_command_failures.md).

    said = spoken(rng, scratch, {"file": "notes/shopping_list.md", "n": 2}, "first {n} lines of {file}")
"""
from __future__ import annotations

import re
from pathlib import Path

from nimllm.vocab import FILE_NOUNS, LIST_NOUNS, NUMBER_NOUNS, NUMBER_WORDS, ORDINALS, OWNERS, ordinal

DESCRIBED = 0.25       # the share of requests about one file that describe it instead of naming it
NUMBER_IN_WORDS = 0.3  # the share of small counts said in words
# requests written as a command ("wc -l {file}") name their file: nobody types `cat my shopping list`
COMMAND_LIKE = ("wc ", "cat ", "grep ", "mv ", "ls ", "diff ", "git ", "mkdir ")


def stem_words(path: str) -> list[str] | None:
    """'shopping_list.md' -> ['shopping', 'list']; None where a part is not a word ('budget3', dates)."""
    words = re.split(r"[_\-]", Path(path).name.split(".")[0])
    return words if all(w.isalpha() for w in words) else None


def nouns(s, path: str) -> list[str] | None:
    """What a person calls this file: a list and a numbers file by what they hold, others by their type."""
    return LIST_NOUNS if path in s.lists else NUMBER_NOUNS if path in s.numbers else FILE_NOUNS.get(Path(path).suffix)


def under(folder: str, path: str) -> bool:
    return folder == "." or path.startswith(folder + "/")


def descriptions(s, path: str) -> list[tuple[str, str]]:
    """(the words, the place) of each description that only this file of the folder fits: its stem
    and type ('shopping list', 'README'), or its type alone where no other file in its place has its
    extension ('log' in logs)."""
    kinds, folder = nouns(s, path), str(Path(path).parent)
    if not kinds:
        return []
    found, words = [], stem_words(path)
    if words and [stem_words(f) and [w.lower() for w in stem_words(f)] for f in s.files].count(
            [w.lower() for w in words]) == 1:
        name = " ".join(words)
        found.append((name if name.isupper() else f"{name} {{noun}}", folder))
    suffix = Path(path).suffix
    if sum(under(folder, f) and Path(f).suffix == suffix for f in s.files) == 1:
        found.append(("{noun}", folder))
    return found


def describe(rng, s, path: str) -> str | None:
    """'my shopping list', 'the README', 'the log in logs', 'our budget spreadsheet in finance', or
    None where no description fits this file alone."""
    found = descriptions(s, path)
    if not found:
        return None
    words, folder = rng.choice(found)
    words = words.format(noun=rng.choice(nouns(s, path)))
    if rng.random() < 0.4:
        words = words.lower()
    place = "" if folder == "." else rng.choice([" in {f}", " in the {f} folder", " under {f}", " in {f}/"]).format(f=folder)
    return f"{rng.choice(OWNERS)} {words}{place}"


def spoken(rng, s, values: dict, template: str) -> dict:
    """The values as the request says them: the file sometimes described, a count sometimes in words,
    and {nth}, the ordinal of n ('3rd', 'third')."""
    said = dict(values)
    n = values.get("n")
    if isinstance(n, int):
        said["nth"] = rng.choice([ORDINALS[n], ordinal(n)]) if n < len(ORDINALS) else ordinal(n)
        if n < len(NUMBER_WORDS) and rng.random() < NUMBER_IN_WORDS:
            said["n"] = NUMBER_WORDS[n]
    if "file" in values and not template.startswith(COMMAND_LIKE) and rng.random() < DESCRIBED:
        said["file"] = describe(rng, s, str(values["file"])) or values["file"]
    return said
