"""The kinds of shell task (nimllm/tasks.py): every kind comes in many phrasings, every command runs and
prints what Python finds in the folder, and the hand-written benchmark (bench/agent_requests.jsonl) is
out of the generator's sight and sound: no shared request, every taught kind asked, ten and more
untaught ones, every reference and check true of its folder."""
import json
import random
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO

from nimllm import shell, skills, speech
from nimllm.sandbox import Sandbox
from nimllm.tasks import KINDS, FileSet, expand, phrase

sys.path.insert(0, str(REPO / "bench"))
import agent as bench  # noqa: E402


def normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.fixture
def folders(tmp_path):
    """40 scratch folders and a request of every kind that fits each."""
    made = []
    for seed in range(40):
        rng = random.Random(seed)
        s = skills.make_scratch(rng, tmp_path)
        made.append((s, [r for k in KINDS.values() if (r := k.make(rng, s))]))
    return made


def test_templates_expand_alternatives_macros_and_slots():
    rng = random.Random(0)
    texts = {expand("{SHOW} [the|a] [first|[top|head]] {n} lines", rng, n=3) for _ in range(200)}
    assert all(re.fullmatch(r"[a-z ]+ (the|a) (first|top|head) 3 lines", t) for t in texts) and len(texts) > 20
    assert not any("[" in t or "{" in t for t in texts)
    asked = [phrase(random.Random(i), "count the files in {folder}", folder="src_old") for i in range(300)]
    assert all("src_old" in t for t in asked)                       # a typo never touches a value
    assert any(t.endswith("?") for t in asked) and any(t.startswith(("please", "Please")) for t in asked)


@pytest.mark.slow
def test_at_least_sixty_kinds_each_in_many_phrasings(folders):
    """Phrasings apart from the slot values: at least 20 distinct ones per kind in 5 draws over 40 folders."""
    assert len(KINDS) >= 60
    phrasings, rng = {}, random.Random(2)
    for s, _ in folders:
        for r in (r for k in KINDS.values() for _ in range(5) if (r := k.make(rng, s))):
            text = r.text
            for value in r.values.values():
                if isinstance(value, (str, int)) and str(value):
                    text = text.replace(str(value), "X")
            phrasings.setdefault(r.kind, set()).add(normal(text))
    assert set(phrasings) == set(KINDS), set(KINDS) - set(phrasings)
    assert min(len(p) for p in phrasings.values()) >= 20, sorted((len(p), k) for k, p in phrasings.items())[:5]


def python_truth(r, root: Path) -> str | None:
    """What the request's command must print, found by Python where the kind (or its way: "kind.way") is a
    count, a list, a number, a field or a range of lines (None for the rest)."""
    v = r.values
    if "fileset" in v:
        found = v["fileset"].matches(root)
        return {"count_files": str(len(found)), "list_files": "\n".join(sorted(found))}.get(r.kind)
    path = root / str(v.get("file", ""))
    text = path.read_bytes().decode(errors="replace") if "file" in v and path.is_file() else ""
    lines, word = text.splitlines(), str(v.get("word", ""))
    numbers = lambda: [int(x) for x in text.split()]                                      # noqa: E731
    column = lambda: [int(line.split(",")[v["i"] - 1]) for line in lines[1:]]            # noqa: E731
    having = lambda has: str(sum(bool(has(line)) for line in lines))                      # noqa: E731
    shown = lambda part: "\n".join(line.strip() for line in part)                         # noqa: E731
    return {"count_lines": lambda: str(text.count("\n")), "count_words": lambda: str(len(text.split())),
            "count_words.chars": lambda: str(len(path.read_bytes())),
            "file_size": lambda: str((root / v["file"]).stat().st_size),
            "first_line.words": lambda: str(len(lines[0].split()) if lines else 0),
            "head_lines.range": lambda: shown(lines[:v["n"]]), "line_n.range": lambda: shown(lines[v["a"] - 1:v["b"]]),
            "min_number": lambda: str(min(numbers())), "max_number": lambda: str(max(numbers())),
            "max_number.reverse": lambda: str(max(numbers())), "sum_numbers": lambda: str(sum(numbers())),
            "csv_rows": lambda: str(len(lines) - 1), "csv_sum": lambda: str(sum(column())),
            "csv_sum.max": lambda: str(max(column())), "csv_sum.min": lambda: str(min(column())),
            "grep_count": lambda: having(lambda line: word in line),
            "grep_count.without": lambda: having(lambda line: word not in line),
            "grep_count.whole_word": lambda: having(lambda line: re.search(rf"(?<!\w){word}(?!\w)", line)),
            "grep_ignore_case.count": lambda: having(lambda line: word.lower() in line.lower()),
            "json_field": lambda: str(json.loads(text)[v["field"]]).replace("True", "true").replace("False", "false"),
            "count_unique": lambda: str(len(set(lines))),
            "count_unique.repeated": lambda: str(sum(n > 1 for n in Counter(lines).values())),
            "arithmetic": lambda: str(eval(f"{v['a']} {v['op']} {v['b']}")),   # noqa: S307 (our own numbers)
            }.get(f"{r.kind}.{r.way}" if r.way else r.kind, lambda: None)()


def kinds_checked(s, requests) -> set[str]:
    """Run every request's command in the sandbox of its folder, the changes last, and check what it prints
    or does; the kinds whose output or change was checked."""
    checked = set()
    sandbox = Sandbox(s.root)
    for r in sorted(requests, key=lambda r: r.check == "files"):   # the folder changes last
        if r.check == "files":
            assert not r.verify(s.root), r.command
        truth = python_truth(r, s.root)
        result = sandbox.run(r.command)
        if r.check == "files" and result.exit_code:   # an earlier change took its file away
            continue
        assert result.exit_code in r.ok_exits, (r.command, result.output)
        assert r.answer(result.output) or not result.output.strip(), (r.command, result.output)   # (empty: no episode)
        if r.check == "files":
            assert r.verify(s.root), r.command
            checked.add(r.kind)
        if truth is not None:
            printed = [line.strip().removeprefix("./") for line in result.output.strip().splitlines()]
            printed = "\n".join(sorted(printed) if r.kind == "list_files" else printed)   # find's order is the disk's
            assert printed == truth, (r.command, printed, truth)
            checked |= {r.kind, f"{r.kind}.{r.way}"}
    return checked


# A sandbox's start mostly waits on the kernel: four folders at once take half as long as one after another
# (each folder's commands still run in order).
FOLDERS_AT_ONCE = 4


@pytest.mark.slow
def test_every_command_runs_and_prints_what_python_finds(folders):
    with ThreadPoolExecutor(FOLDERS_AT_ONCE) as pool:
        checked = set().union(*pool.map(lambda folder: kinds_checked(*folder), folders[:25]))
    assert {"count_files", "list_files", "count_lines", "min_number", "csv_sum", "json_field", "arithmetic",
            "make_folder", "replace_text", "move_file"} <= checked
    assert len({k for k in checked if "." in k and not k.endswith(".")}) >= 6, checked   # the other ways too


def test_no_command_the_corpus_teaches_is_one_the_agent_refuses_under_yes(folders):
    """`nimllm agent --yes` refuses what its filter warns about: a taught command it warns about is a task
    the agent can never do (find -exec was one)."""
    taught = [(s, r) for s, requests in folders for r in requests]
    assert {(r.kind, why) for s, r in taught for why in shell.warnings(r.command, s.root)} == set()
    assert "total_lines" in {r.kind for _, r in taught}


def test_a_share_of_requests_describe_their_file_and_only_that_file_fits(folders):
    """'my shopping list' for shopping_list.md, 'the log in logs' for logs/server.log: a request may name
    no file but describe it, and then the command uses the one file of its place that the words fit (its
    stem's words, or its extension's noun where no other file there has that extension)."""
    about_a_file = [(s, r) for s, rs in folders for r in rs if "file" in r.values and r.check == "answer"]
    described = [(s, r) for s, r in about_a_file if r.said["file"] != r.values["file"]]
    assert len(described) >= 0.12 * len(about_a_file), (len(described), len(about_a_file))
    for s, r in described:
        path = str(r.values["file"])
        assert path in r.command and Path(path).name not in r.text, (r.text, r.command)
        folder, said = str(Path(path).parent), r.said["file"].lower()
        assert folder == "." or f" {folder.lower()}" in said, (said, path)   # a subfolder's file: its folder said
        fits = {f: len(words) for f in s.files if speech.under(folder, f) and (words := speech.stem_words(f))
                and f" {' '.join(words).lower()} " in f" {said} "}   # the file whose name the words say most fully
        best = [f for f, n in fits.items() if n == max(fits.values(), default=0)]
        same_type = [f for f in s.files if speech.under(folder, f) and Path(f).suffix == Path(path).suffix]
        assert best == [path] or same_type == [path], (said, path, fits, same_type)


def test_small_numbers_come_in_words_and_ordinals(folders):
    texts = " ".join(r.text for _, rs in folders for r in rs if r.kind in ("head_lines", "tail_lines", "line_n"))
    assert re.search(r"\b(two|three|four|five|six)\b", texts) and re.search(r"\b(\d+(st|nd|rd|th)|third|second)\b", texts)


# each command part and the kinds it must be taught in (grep -l | wc -l: only counting files that mention a word)
PARTS = {r"sort[^|]*\| head -n 1\b": 2, r"sort[^|]*\| tail -n 1\b": 2, r"sort -r ": 2, r"sort -rn\b": 2,
         r"grep -\w*c": 2, r"grep -\w*v": 2, r"grep -\w*w": 2, r"grep -\w*i": 2, r"grep -\w*l.*\| wc -l": 1,
         r"sed -n '\d+,\d+p'": 2, r"wc -c": 2, r"wc -w": 2, r"uniq -c": 2, r"uniq -d": 2, r"\btr ": 2,
         r"cut -d, -f": 2}


def test_each_command_part_is_taught_in_several_kinds(folders):
    """A request the corpus never made (the smallest file, a list from Z to A) is a combination of parts
    it taught: head and tail after sort, sort -r, grep's -c -v -w -i, sed -n 'A,Bp', uniq -d, tr ..."""
    rng = random.Random(3)
    commands = [(r.kind, r.command) for s, _ in folders[:20] for k in KINDS.values() for _ in range(6)
                if (r := k.make(rng, s))]
    kinds = {part: {kind for kind, command in commands if re.search(part, command)} for part in PARTS}
    assert all(len(kinds[part]) >= n for part, n in PARTS.items()), {p: sorted(k) for p, k in kinds.items()}


def test_a_fileset_is_the_find_it_says():
    fs = FileSet("src", ext=".md", min_kb=2, days=7, top_only=True)
    assert fs.find() == "find src -maxdepth 1 -type f -name '*.md' -size +2k -mtime -7"
    assert fs.said() == ".md files bigger than 2 KB changed in the last 7 days in src"
    assert FileSet().find() == "find . -type f -not -path './.git/*'"


# ---- the hand-written benchmark ------------------------------------------------------------------------

REQUESTS = [json.loads(line) for line in (REPO / "bench" / "agent_requests.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_generator_never_writes_a_hand_written_request(folders):
    generated = {normal(r.text) for _, requests in folders for r in requests}
    rng = random.Random(1)
    for s, _ in folders:   # 30 more phrasings of every kind in every folder
        generated |= {normal(r.text) for k in KINDS.values() for _ in range(30) if (r := k.make(rng, s))}
    assert len(generated) > 50_000
    assert not generated & {normal(r["request"]) for r in REQUESTS}
    sources = "".join(p.read_text() for p in (REPO / "nimllm").glob("*.py"))
    assert "agent_requests" not in sources and "agent_folders" not in sources


def test_the_hand_written_set_asks_every_taught_kind_and_ten_untaught_ones():
    assert len(REQUESTS) >= 150 and len({normal(r["request"]) for r in REQUESTS}) == len(REQUESTS)
    taught = {r["kind"] for r in REQUESTS if r.get("taught", True)}
    untaught = {r["kind"] for r in REQUESTS if not r.get("taught", True)}
    assert taught == set(KINDS) and len(untaught) >= 10 and not untaught & set(KINDS)


@pytest.mark.slow
def test_every_hand_written_check_is_true_of_its_folder(tmp_path):
    """The references run and print one line where the check reads an answer; a change's check fails
    on the untouched folder and passes once its reference command ran."""
    def check(task):
        folder = task.make(tmp_path)
        result = Sandbox(folder).run(task.ref)
        assert result.exit_code == 0, (task.ref, result.output)
        if task.check == "files":
            assert task.verify(folder), task.ref
            assert not task.verify(task.make(tmp_path)), task.request
        else:
            lines = bench.lines_of(result.output)
            assert lines and (task.check == "shown" or len(lines) == 1), (task.ref, lines)
    with ThreadPoolExecutor(FOLDERS_AT_ONCE) as pool:   # each task in a folder of its own
        list(pool.map(check, bench.hand_written()))


def open_values(folders) -> dict[str, float]:
    """How open a request's values are: the share of file names none of skills.STEMS starts, the number
    of distinct search words, list and numbers files, csv columns and json fields, and whether names come
    in capitals, with hyphens and with digits."""
    requests = [r for _, rs in folders for r in rs]
    files = [Path(str(r.values["file"])).name for r in requests if "file" in r.values]
    stems = [re.split(r"[._\-\d]", f)[0].lower() for f in files]
    of = lambda *kinds, key="file": {str(r.values[key]) for r in requests if r.kind in kinds}  # noqa: E731
    return {"unlisted file share": sum(s not in skills.STEMS for s in stems) / len(stems),
            "search words": len(of("grep_lines", "grep_count", "grep_files", "grep_everywhere", key="word")),
            "list files": len(of("sort_lines", "unique_lines", "most_common")),
            "numbers files": len(of("min_number", "max_number", "sum_numbers")),
            "csv columns": len(of("csv_column", key="column")), "json fields": len(of("json_field", key="field")),
            "capitals": any(f[:1].isupper() for f in files), "hyphens": any("-" in f for f in files),
            "five digits": any(len(str(r.values.get("a", ""))) == 5 for r in requests)}


def test_values_are_mostly_ones_no_fixed_list_holds(folders):
    """A model must copy a request's values, not recall them: most file names start with no stem of a fixed
    list, and search words, list and numbers files, csv columns and json fields each take many values."""
    seen = open_values(folders)
    assert seen["unlisted file share"] >= 0.6, seen
    assert min(seen[k] for k in ("search words", "list files", "csv columns", "json fields")) >= 15, seen
    assert seen["numbers files"] >= 8 and seen["capitals"] and seen["hyphens"] and seen["five digits"], seen
