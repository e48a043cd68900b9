"""The kinds of everyday shell task the agent-skill corpus teaches, each assembled from parts.

A request is not one of a kind's few sentences: it is put together from an intent, the object it is
about (a file, a set of files described by extension, name, size, age and place), quantities and
modifiers, in the words of a large table of synonyms, as a question or an order, polite, indirect or
terse, now and then with a typo. The command is put together from matching parts (`find` with
`-name`, `-size`, `-mtime`, `-maxdepth`; pipes into `wc -l`, `sort`, `uniq -c`, `head`, `tail`),
and the answer carries what the command printed. A kind holds several ways (kindparts.Way), each with
its own wording, command and answer, so that one command part (head or tail after sort, grep -v, sed -n
'A,Bp', uniq -d, tr) is taught in several kinds; a file may be described instead of named ("my shopping
list": nimllm/speech.py). The hand-written requests that bench/agent.py asks are never read here.

    rng = random.Random(0); request = KINDS["count_files"].make(rng, scratch)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from nimllm import vocab
from nimllm.kindparts import (FileSet, Kind, Request, Way, expand, fileset_kind, in_place, phrase,  # noqa: F401
                              simple_kind)   # (FileSet, Request and phrase: for nimllm/skills.py and the tests)
from nimllm.readouts import (done, first, frequency, git_changes, listing, lines_of, names, number, quoted, shown,
                             sized_path)


def line_numbers(out: str) -> str | None:
    """'3, 7 and 12' from grep -n's '3:...' lines."""
    return names(re.findall(r"^(\d+):", out, re.M))


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
                 " -printf '%s %p\\n' | sort -n | tail -n 1", ["The {BIG} is {key}.", "{key} is the {BIG}."], sized_path,
                 ways=[Way("smallest", ["{WHICH} is the {SMALL} of the {set}{where}?", "{FIND} the {SMALL} {set}{where}",
                                        "{WHICH} {set}{where} takes the least space?", "{SMALL} {set}{where}?"],
                           " -printf '%s %p\\n' | sort -n | head -n 1", ["The smallest is {key}."], sized_path)]),
    fileset_kind("newest_file", ["{WHICH} is the {NEW} of the {set}{where}?", "{FIND} the {NEW} {set}{where}",
                                 "{WHICH} {set}{where} changed last?", "{NEW} {set}{where}?"],
                 " -printf '%T@ %p\\n' | sort -n | tail -n 1 | cut -d' ' -f2-", ["The {NEW} is {key}.",
                                                                                "{key} changed last."], first,
                 ways=[Way("oldest", ["{WHICH} is the {OLD} of the {set}{where}?", "{FIND} the {OLD} {set}{where}",
                                      "{WHICH} {set}{where} changed first?", "{OLD} {set}{where}?"],
                           " -printf '%T@ %p\\n' | sort -n | head -n 1 | cut -d' ' -f2-", ["The oldest is {key}."], first)]),
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
                "wc -w < {file}", ["{file} has {key} words.", "{key} words."], number,
                ways=[Way("chars", ["{HOWMANY} characters are in {file}?", "character count of {file}?",
                                    "how long is {file} in characters?"], "wc -c < {file}",
                          ["{file} has {key} characters.", "{key} characters."], number)]),
    simple_kind("file_size", a_file, ["how big is {file}?", "what size is {file}?", "{HOWMANY} bytes is {file}?",
                                      "size of {file}?", "how large is {file}?"],
                "wc -c < {file}", ["{file} is {key} bytes.", "{key} bytes."], number),
    simple_kind("show_file", a_text, ["{SHOW} {file}", "what does {file} say?", "cat {file}", "open {file}",
                                      "read {file} to me", "what's in {file}?"],
                "cat {file}", ["That is {file}: {key}.", "Shown above; {key}."], shown,
                ways=[Way("upper", ["{SHOW} {file} in [capitals|upper case|all caps]", "{file} in capital letters"],
                          "tr a-z A-Z < {file}", ["In capitals, {key}."], shown)]),
    simple_kind("head_lines", a_text, ["{SHOW} the first {n} {LINES} of {file}", "first {n} {LINES} of {file}?",
                                       "head of {file}", "top {n} {LINES} of {file}"],
                "head -n {n} {file}", ["The first lines of {file}: {key}.", "Above; {key}."], shown,
                ways=[Way("range", ["{SHOW} lines 1 to {n} of {file}", "lines 1-{n} of {file}?",
                                    "{file} from line 1 through line {n}"],
                          "sed -n '1,{n}p' {file}", ["Lines 1 to {n} of {file}: {key}."], shown)]),
    simple_kind("tail_lines", a_text, ["{SHOW} the last {n} {LINES} of {file}", "last {n} {LINES} of {file}?",
                                       "tail of {file}", "bottom {n} {LINES} of {file}", "end of {file}"],
                "tail -n {n} {file}", ["The last lines of {file}: {key}.", "Above; {key}."], shown),
    simple_kind("first_line", a_text, ["what is the first line of {file}?", "{SHOW} the first line of {file}",
                                       "how does {file} start?", "line 1 of {file}?"],
                "head -n 1 {file}", ["The first line of {file} is {key}.", "It starts with {key}."], quoted,
                ways=[Way("words", ["{HOWMANY} words are on the first line of {file}?",
                                    "{COUNT} the words in the first line of {file}"],
                          "head -n 1 {file} | wc -w", ["The first line of {file} has {key} words."], number)]),
    simple_kind("last_line", a_text, ["what is the last line of {file}?", "{SHOW} the last line of {file}",
                                      "how does {file} end?", "final line of {file}?"],
                "tail -n 1 {file}", ["The last line of {file} is {key}.", "It ends with {key}."], quoted),
    simple_kind("line_n", a_line_range, ["what is line {n} of {file}?", "{SHOW} line {n} of {file}",
                                         "line number {n} in {file}?", "what does line {n} of {file} say?",
                                         "what's the {nth} line of {file}?", "{SHOW} the {nth} line of {file}"],
                "sed -n '{n}p' {file}", ["Line {n} of {file} is {key}.", "It says {key}."], quoted,
                ways=[Way("range", ["{SHOW} lines {a} to {b} of {file}", "lines {a}-{b} of {file}?",
                                    "what do lines {a} through {b} of {file} say?", "{file} from line {a} to line {b}"],
                          "sed -n '{a},{b}p' {file}", ["Lines {a} to {b} of {file}: {key}."], shown)]),
    # -- searching text
    simple_kind("grep_files", lambda r, s: word_anywhere(r, s, ABSENT), ["{WHICH} {FILES} {CONTAINS} {word}?", "{FIND} the {FILES} that {CONTAINS} {word}",
                                              "where does {word} appear?", "grep for {word}",
                                              "search {word}{where}", "{WHICH} {FILES} say {word}?"],
                "grep -rl '{word}' . --exclude-dir=.git", ["{word} is in {count} files: {names}.", "{names}."], listing,
                ok_exits=(0, 1), nothing=["No file here mentions {word}.", "{word} is in no file."],
                ways=[Way("any_case", ["{WHICH} {FILES} {CONTAINS} {word} in any case?",
                                       "{FIND} the {FILES} with {word}, ignoring case"],
                          "grep -rli '{word}' . --exclude-dir=.git", ["{count} files have {word} in any case: {names}."],
                          listing, ["No file has {word}, in any case."]),
                      Way("whole_word", ["{WHICH} {FILES} {CONTAINS} the word {word} (the whole word)?",
                                         "{FIND} the {FILES} with {word} as a whole word"],
                          "grep -rlw '{word}' . --exclude-dir=.git", ["{count} files have the word {word}: {names}."],
                          listing, ["No file has the word {word}."])]),
    simple_kind("grep_count_files", lambda r, s: word_anywhere(r, s, ABSENT), ["{HOWMANY} {FILES} {CONTAINS} {word}?",
                                                    "in {HOWMANY} {FILES} does {word} appear?",
                                                    "{COUNT} the {FILES} that mention {word}"],
                "grep -rl '{word}' . --exclude-dir=.git | wc -l", ["{key} files mention {word}."], number,
                ways=[Way("any_case", ["{HOWMANY} {FILES} {CONTAINS} {word} in any case?",
                                       "in {HOWMANY} {FILES} does {word} {APPEAR}, ignoring case?"],
                          "grep -rli '{word}' . --exclude-dir=.git | wc -l", ["{key} files have {word} in any case."],
                          number),
                      Way("whole_word", ["in {HOWMANY} {FILES} does the whole word {word} {APPEAR}?"],
                          "grep -rlw '{word}' . --exclude-dir=.git | wc -l", ["{key} files have the word {word}."],
                          number)]),
    simple_kind("grep_lines", lambda r, s: a_word(r, s, ABSENT), ["{SHOW} the {LINES} of {file} that {CONTAINS} {word}",
                                       "{WHICH} {LINES} of {file} mention {word}?", "{FIND} {word} in {file}",
                                       "grep {word} in {file}", "on what line of {file} is {word}?"],
                "grep -n '{word}' {file}", ["{word} is on line {key} of {file}.", "Line {key}."],
                line_numbers, ok_exits=(0, 1),
                nothing=["{word} is not in {file}.", "No line of {file} has {word}."],
                ways=[Way("without", ["{SHOW} the {LINES} of {file} that don't {CONTAINS} {word}",
                                      "{WHICH} {LINES} of {file} do not mention {word}?"],
                          "grep -vn '{word}' {file}", ["Lines {key} of {file} have no {word}."], line_numbers,
                          ["Every line of {file} has {word}."]),
                      Way("whole_word", ["{WHICH} {LINES} of {file} have the word {word} (whole word only)?",
                                         "{FIND} {word} as a whole word in {file}"],
                          "grep -wn '{word}' {file}", ["The word {word} is on line {key}."], line_numbers,
                          ["The word {word} is not in {file}."])]),
    simple_kind("grep_count", lambda r, s: a_word(r, s, ABSENT), ["{HOWMANY} {LINES} of {file} {CONTAINS} {word}?",
                                       "{COUNT} the {LINES} with {word} in {file}",
                                       "in {HOWMANY} {LINES} of {file} does {word} appear?"],
                "grep -c '{word}' {file}", ["{key} lines of {file} contain {word}.", "{key}."], number, ok_exits=(0, 1),
                ways=[Way("without", ["{HOWMANY} {LINES} of {file} don't {CONTAINS} {word}?",
                                      "{COUNT} the {LINES} of {file} without {word}"],
                          "grep -vc '{word}' {file}", ["{key} lines of {file} have no {word}."], number),
                      Way("whole_word", ["{HOWMANY} {LINES} of {file} have the whole word {word}?"],
                          "grep -wc '{word}' {file}", ["{key} lines have the word {word}."], number)]),
    simple_kind("grep_everywhere", lambda r, s: word_anywhere(r, s, ABSENT), ["{SHOW} every line that mentions {word}{where}",
                                                   "{FIND} all {LINES} with {word}{where}, with line numbers",
                                                   "where does {word} {APPEAR} {ACROSS} {FILES}?"],
                "grep -rn '{word}' . --exclude-dir=.git", ["{count} lines mention {word}; shown above."], listing,
                ok_exits=(0, 1), nothing=["Nothing here mentions {word}.", "No line mentions {word}."]),
    simple_kind("grep_ignore_case", lambda r, s: a_word(r, s, ABSENT), ["{FIND} {word} in {file}, ignoring case",
                                             "{WHICH} {LINES} of {file} have {word} in any case?"],
                "grep -in '{word}' {file}", ["Lines {key}."], line_numbers,
                ok_exits=(0, 1), nothing=["{word} is not in {file}, in any case."],
                ways=[Way("count", ["{HOWMANY} {LINES} of {file} have {word} in any case?",
                                    "{COUNT} the {LINES} of {file} with {word}, ignoring case"],
                          "grep -ic '{word}' {file}", ["{key} lines of {file} have {word} in any case."], number)]),
    # -- lists of lines: sort, unique, frequencies, numbers
    simple_kind("sort_lines", a_list, ["sort {file}", "{SHOW} {file} sorted", "put {file} in [alphabetical|A to Z] order",
                                       "{file} in order please", "sort the {ENTRIES} of {file}"], "sort {file}",
                ["Sorted, {key}."], shown,
                ways=[Way("reverse", ["sort {file} [from Z to A|in reverse|backwards]", "{SHOW} {file} in reverse order",
                                      "{ENTRIES} of {file} from Z to A"], "sort -r {file}", ["Z to A, {key}."], shown)]),
    simple_kind("first_sorted", a_list, ["{WHICH} entry of {file} comes first alphabetically?",
                                         "first line of {file} in [A to Z|alphabetical] order?"],
                "sort {file} | head -n 1", ["{key} comes first."], first,
                ways=[Way("last", ["{WHICH} {ENTRIES} of {file} comes last alphabetically?",
                                   "last of {file} in [A to Z|alphabetical] order?"],
                          "sort {file} | tail -n 1", ["{key} comes last."], first),
                      Way("reverse", ["{WHICH} of the {ENTRIES} in {file} comes first from Z to A?"],
                          "sort -r {file} | head -n 1", ["{key} comes first from Z to A."], first)]),
    simple_kind("unique_lines", a_list, ["{SHOW} the [unique|distinct|different] entries of {file}",
                                         "{file} without [duplicates|repeats]", "dedupe {file}"],
                "sort -u {file}", ["The distinct entries: {key}."], lambda out: names(lines_of(out)),
                ways=[Way("repeated", ["{WHICH} {ENTRIES} of {file} appear more than once?",
                                       "{SHOW} the repeated {ENTRIES} in {file}"], "sort {file} | uniq -d",
                          ["Repeated: {key}."], lambda out: names(lines_of(out)), ["Nothing in {file} repeats."]),
                      Way("any_case", ["{SHOW} the distinct {ENTRIES} of {file}, ignoring case",
                                       "{file} in lower case without repeats"], "tr A-Z a-z < {file} | sort -u",
                          ["In lower case: {key}."], lambda out: names(lines_of(out)))]),
    simple_kind("count_unique", a_list, ["{HOWMANY} [unique|distinct|different] entries are in {file}?",
                                         "{COUNT} the distinct lines of {file}"],
                "sort -u {file} | wc -l", ["{key} distinct entries."], number,
                ways=[Way("repeated", ["{HOWMANY} {ENTRIES} of {file} appear more than once?",
                                       "{COUNT} the repeated {ENTRIES} in {file}"], "sort {file} | uniq -d | wc -l",
                          ["{key} entries repeat."], number)]),
    simple_kind("most_common", a_list, ["{WHICH} entry appears most [often|] in {file}?",
                                        "most [common|frequent] line in {file}?", "what comes up most in {file}?"],
                "sort {file} | uniq -c | sort -rn | head -n 1", ["{key} is the most common."], frequency,
                ways=[Way("least", ["{WHICH} {ENTRIES} of {file} {APPEAR} least often?", "rarest line in {file}?"],
                          "sort {file} | uniq -c | sort -n | head -n 1", ["{key} is the rarest."], frequency)]),
    simple_kind("frequencies", a_list, ["how often does each entry of {file} appear?", "frequency of each line in {file}",
                                        "{COUNT} each [entry|value] in {file}"],
                "sort {file} | uniq -c | sort -rn", ["Most often: {key}."], frequency),
    simple_kind("sort_numbers", numbers, ["sort {file} [numerically|by value|smallest first]",
                                          "{SHOW} the {NUMBERS} in {file} in order"], "sort -n {file}",
                ["In order, {key}."], shown,
                ways=[Way("reverse", ["sort {file} [from highest to lowest|largest first|in descending order]",
                                      "{SHOW} the {NUMBERS} in {file}, {HIGHEST} first"], "sort -rn {file}",
                          ["Highest first, {key}."], shown)]),
    simple_kind("min_number", numbers, ["what is the {SMALL} number in {file}?", "{LOWEST} of the {NUMBERS} in {file}?",
                                        "{FIND} the smallest number in {file}"], "sort -n {file} | head -n 1",
                ["The smallest is {key}.", "{key}."], number),
    simple_kind("max_number", numbers, ["what is the largest number in {file}?", "[highest|maximum] value in {file}?",
                                        "{FIND} the biggest number in {file}"], "sort -n {file} | tail -n 1",
                ["The largest is {key}.", "{key}."], number,
                ways=[Way("reverse", ["what is the {HIGHEST} of the {NUMBERS} in {file}?",
                                      "{FIND} the {HIGHEST} [score|value] in {file}"], "sort -rn {file} | head -n 1",
                          ["The highest is {key}."], number)]),
    simple_kind("sum_numbers", numbers, ["add up the {NUMBERS} in {file}", "what is the [sum|total] of {file}?",
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
                ["The {column}s: {key}."], lambda out: names(lines_of(out)),
                ways=[Way("distinct", ["{SHOW} the distinct {column} values in {file}", "which {column}s occur in {file}?"],
                          "cut -d, -f{i} {file} | tail -n +2 | sort -u", ["The distinct {column}s: {key}."],
                          lambda out: names(lines_of(out)))]),
    simple_kind("csv_rows", the_csv, ["{HOWMANY} rows does {file} have, not counting the header?",
                                      "{HOWMANY} records are in {file}?", "{COUNT} the entries in {file}"],
                "tail -n +2 {file} | wc -l", ["{file} has {key} rows.", "{key} records."], number),
    simple_kind("csv_sum", lambda r, s: the_csv(r, s, numeric=True),
                ["what is the total {column} in {file}?", "add up the {column} column of {file}",
                 "sum of {column} in {file}?"], "awk -F, 'NR>1 {{s+=${i}}} END {{print s}}' {file}",
                ["The {column} column adds up to {key}.", "{column} adds up to {key}."], number,
                ways=[Way("max", ["what is the {HIGHEST} {column} in {file}?", "{HIGHEST} value of {column} in {file}?"],
                          "cut -d, -f{i} {file} | tail -n +2 | sort -n | tail -n 1", ["The highest {column} is {key}."],
                          number),
                      Way("min", ["what is the {LOWEST} {column} in {file}?", "{LOWEST} value of {column} in {file}?"],
                          "cut -d, -f{i} {file} | tail -n +2 | sort -n | head -n 1", ["The lowest {column} is {key}."],
                          number)]),
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
