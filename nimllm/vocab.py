"""The values of the agent-skill corpus: words, names, numbers and file names from sources too large
to learn by heart, so that a model trained on it must copy a request's values from the request and
the command's output rather than recall them.

WORDS (nimllm/words.txt) are the 2,602 lower-case words of 3-10 letters that the Python standard
library's docstrings and pydoc_data's topics use in at least three modules, and no more than three
times as often as code names (run once on Python 3.12; committed so that the corpus does not depend on
the Python it runs on). Made-up names are random letters, people have a first and a last name, and
numbers have one to five digits. The words requests are made of (synonyms, the names of kinds of
files, openers and closers) are here too, for nimllm/tasks.py to put together.

    rng = random.Random(0); stem(rng), person(rng), commit_message(rng), number(rng)
"""
from __future__ import annotations

import random
import string
from pathlib import Path

WORDS = tuple((Path(__file__).parent / "words.txt").read_text().split())
# first and last names of people (authors, list entries, table rows): none is a name of the chat
# corpus (nimllm/dialogues.py), whose facts must not be confused with a folder's
FIRST_NAMES = ("Aaron Adele Ahmed Aiko Alan Alice Amara Andre Anika Arjun Beatriz Bruno Chen Chiara "
               "Dana Daniel Deepa Dorothy Elena Emil Fatima Farah Gloria Goran Hana Hugo Ibrahim "
               "Irene Isaac Ivan Jamal Julia Kai Kenji Kofi Laila Lena Leon Lucia Malik Marco Maya Mei Nadia Nina "
               "Noah Omar Pablo Priya Quinn Rafael Rosa Ruth Samir Sofia Tariq Tomas Uma Victor Wei Xavier "
               "Yara Yusuf Zainab Zoe").split()
LAST_NAMES = ("Abbott Acosta Adeyemi Bauer Becker Brandt Campos Castro Chowdhury Costa Dalton Delgado Dubois "
              "Duarte Fischer Fleming Garcia Gomez Grant Haddad Hart Hoffmann Ibarra Jensen Kaplan Kato Keller "
              "Khan Kowalski Kumar Lambert Larsen Mendes Meyer Moreau Murphy Nakamura Novak Okafor Oliveira Ortiz "
              "Park Pereira Quinn Ramos Reyes Rossi Sato Schmidt Silva Singh Suzuki Tanaka Torres Vargas Walsh "
              "Weber Yamada Young Zhang").split()
CONSONANTS, VOWELS = "bcdfghjklmnprstvwxz", "aeiouy"
# ---- the words a request is made of (nimllm/tasks.py): how people name kinds of files, where, and how they ask

# {NAME} in a template: one of these, itself expanded; [a|b|c]: one of a, b, c
MACROS = {
    "SHOW": "[show|print|display|give me|let me see|output|dump|list]",
    "FILES": "[files|documents|file]",
    "FOLDER": "[folder|directory|dir]",
    "COUNT": "[count|tally up|tally|add up|figure out the number of|get me the count of]",
    "HOWMANY": "[how many|how many|what number of|how many total]",
    "FIND": "[find|locate|look for|search for|track down|hunt down]",
    "WHICH": "[which|what]",
    "BIG": "[biggest|largest|heaviest]",
    "SMALL": "[smallest|tiniest|lightest]",
    "NEW": "[newest|most recent|latest|most recently changed|last modified]",
    "MAKE": "[create|make|set up|add]",
    "LINES": "[lines|rows|lines of text]",
    "WORDS": "[words|word tokens]",
    "CONTAINS": "[contain|mention|include|have|use|say|talk about]",
    "APPEAR": "[appear|occur|show up|come up]",
    "LOWEST": "[lowest|smallest|worst|minimum|least|bottom]",
    "HIGHEST": "[highest|largest|top|best|maximum|biggest]",
    "OLD": "[oldest|least recently changed|longest untouched]",
    "ENTRIES": "[entries|items|lines|records|rows|names|things]",   # of a list file
    "NUMBERS": "[numbers|scores|values|figures|amounts]",          # of a numbers file
    "ACROSS": "[across all|in all the|in every one of the|throughout the]",
    "TELL": "[tell me|let me know|I want to know|I'd like to know|do you know]",
}
EXT_WORDS = {".md": ["markdown", "md", ".md"], ".py": ["python", "py", ".py"], ".txt": ["text", "txt", ".txt"],
             ".log": ["log", ".log"], ".csv": ["csv", ".csv"], ".json": ["json", ".json"],
             ".sh": ["shell script", ".sh", "bash"], ".html": ["html", ".html"], ".yaml": ["yaml", ".yaml", "yml"],
             ".css": ["css", ".css"], ".js": ["javascript", "js", ".js"], ".ts": ["typescript", ".ts"],
             ".xml": ["xml", ".xml"], ".toml": ["toml", ".toml"], ".ini": ["ini", ".ini"], ".sql": ["sql", ".sql"],
             ".c": ["C", ".c"], ".go": ["go", ".go"], ".rs": ["rust", ".rs"], ".java": ["java", ".java"],
             ".tsv": ["tsv", ".tsv"], ".svg": ["svg", ".svg"], ".png": ["png", ".png"], ".jpg": ["jpg", "jpeg", ".jpg"],
             ".pdf": ["pdf", ".pdf"], ".dat": ["dat", ".dat"], ".bak": ["backup", ".bak"], ".tex": ["latex", ".tex"]}
EXT_NOUNS = {".md": ["notes", "markdown docs"], ".py": ["python scripts", "scripts"], ".log": ["logs", "log files"],
             ".sh": ["shell scripts"], ".html": ["web pages", "html pages"], ".csv": ["spreadsheets"],
             ".txt": ["text files"], ".json": ["json files"], ".yaml": ["yaml configs"], ".css": ["stylesheets"],
             ".js": ["javascript files", "js scripts"], ".ts": ["typescript sources"], ".xml": ["xml documents"],
             ".toml": ["toml configs"], ".ini": ["ini configs"], ".sql": ["sql queries", "sql scripts"],
             ".c": ["C sources"], ".go": ["go sources"], ".rs": ["rust sources"], ".java": ["java classes"],
             ".tsv": ["tab-separated tables"], ".svg": ["svg images", "vector images"], ".png": ["png images"],
             ".jpg": ["photos", "jpeg images"], ".pdf": ["pdfs", "pdf documents"], ".dat": ["data files"],
             ".bak": ["backups"], ".tex": ["latex documents"]}
HERE = ["", "", " here", " in this folder", " in this directory", " in the current folder", " in here",
        " in cwd", " around here"]
Q_OPENERS = ["", "", "", "hey, ", "quick question: ", "so ", "ok ", "hi, ", "question: ", "um, "]
I_OPENERS = ["", "", "", "please ", "can you ", "could you ", "would you ", "I need you to ", "go ahead and ",
             "pls ", "kindly ", "hey, ", "I'd like you to "]
# first words of a request that is an order ("count the ..."): only those take "please", "can you"...
VERBS = set("""show print display give let output dump list count tally add figure get find locate look search track
hunt create make set sort put write save append copy duplicate rename change call move mv replace compare diff read
open extract unpack unzip archive compress pack zip back dedupe calculate compute work grep cat ls mkdir wc git pwd
date tell""".split())
CLOSERS = ["", "", "", " please", " thanks", " for me", " now", ", thank you", " real quick", " asap"]

# each filter of a set of files once: how `find` says it, how a person may say it, how the answer says it
FILTERS = {
    "name_part": ("-name '*{}*'", ["with {} in the name", "named like {}", "whose name has {} in it",
                                   "called something with {}"], "with {} in the name"),
    "min_kb": ("-size +{}k", ["bigger than {} KB", "over {}k", "larger than {} KB", "above {} kilobytes"],
               "bigger than {} KB"),
    "days": ("-mtime -{}", ["changed in the last {} days", "modified within {} days", "edited in the past {} days",
                            "touched less than {} days ago"], "changed in the last {} days"),
}

# how a person names one file instead of by its name (nimllm/speech.py): whose it is, and what it is by
# its extension (a list or numbers file by what it holds)
OWNERS = ["the", "the", "my", "my", "our"]
FILE_NOUNS = {".md": ["notes", "doc", "document", "markdown file"], ".txt": ["file", "text file", "notes"],
              ".log": ["log", "log file", "logfile"], ".csv": ["spreadsheet", "table", "csv"],
              ".json": ["config", "settings", "json"], ".py": ["script", "python script", "module"],
              ".sh": ["script", "shell script"], ".html": ["page", "web page"], ".yaml": ["config"],
              ".toml": ["config"], ".ini": ["config"], ".css": ["stylesheet"], ".js": ["script"],
              ".sql": ["query"], ".tex": ["paper"], ".rst": ["doc"], ".list": ["list"]}
LIST_NOUNS = ["list", "list", "items list"]
NUMBER_NOUNS = ["numbers", "scores", "figures", "number list"]
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()
ORDINALS = ("zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
            "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth").split()


def ordinal(n: int) -> str:
    """'3rd', '11th', '22nd': the ordinal in digits."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# ---- values

COMMIT_VERBS = ("add,fix,update,remove,rename,move,refactor,clean up,improve,document,test,bump,simplify,split,"
                "merge,revert,handle,support,drop,speed up,rewrite,tidy,check,format").split(",")


def made_up(rng: random.Random, low: int = 3, high: int = 9) -> str:
    """A name no vocabulary holds, of random letters that can be said: 'vostex', 'kahugri', 'zel'."""
    letters, vowel = [], rng.random() < 0.3
    for _ in range(rng.randint(low, high)):
        letters.append(rng.choice(VOWELS if vowel else CONSONANTS))
        vowel = not vowel if rng.random() < 0.85 else vowel
    return "".join(letters)


def word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def number(rng: random.Random, digits: int | None = None) -> int:
    """A number of one to five digits, each length as likely (so 7 and 48213 both come up)."""
    digits = digits or rng.randint(1, 5)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1)


def person(rng: random.Random) -> str:
    """'Kenji Walsh', 'Zoe Vatrunek': a full name, a fifth of them made up."""
    first = made_up(rng, 3, 7).capitalize() if rng.random() < 0.2 else rng.choice(FIRST_NAMES)
    return f"{first} {made_up(rng, 4, 9).capitalize() if rng.random() < 0.2 else rng.choice(LAST_NAMES)}"


def stem(rng: random.Random, common: tuple[str, ...] = ()) -> str:
    """The first part of a file name, in the styles people name files: 'notes', 'ORDER', 'queue-size',
    'backup2', 'tevolan', 'monthly_report' (`common`: names people often give, one pick in four)."""
    style = rng.random()
    base = rng.choice(common) if common and rng.random() < 0.25 else word(rng)
    if style < 0.2:
        base = made_up(rng)
    elif style < 0.3:
        base = base.upper()
    elif style < 0.4:
        base = f"{base}{rng.choice(['-', '_'])}{word(rng)}"
    elif style < 0.5:
        base = f"{base}{rng.choice(['', '-', '_'])}{number(rng, rng.randint(1, 4))}"
    elif style < 0.55:
        base = base.capitalize()
    return base


def entries(rng: random.Random) -> list[str]:
    """The few different things a list file names, each on a line: words, people, places or codes."""
    kind = rng.choice([word, lambda r: word(r).capitalize(), lambda r: made_up(r).capitalize(), person,
                       lambda r: r.choice(FIRST_NAMES), lambda r: f"{word(r)} {word(r)}",
                       lambda r: f"{r.choice(string.ascii_uppercase)}{number(r, r.randint(2, 4))}"])
    return list({kind(rng) for _ in range(rng.randint(3, 8))})


def commit_message(rng: random.Random) -> str:
    """'fix crash in loader when parsing empty files', 'bump version to 2.14.0', 'add README'."""
    thing = " ".join(word(rng) for _ in range(rng.randint(1, 3)))
    return rng.choice([f"{rng.choice(COMMIT_VERBS)} {thing}",
                       f"{rng.choice(COMMIT_VERBS)} {thing} in {stem(rng)}",
                       f"{rng.choice(COMMIT_VERBS)} {word(rng)} when {word(rng)} is {word(rng)}",
                       f"bump version to {rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
                       f"{rng.choice(COMMIT_VERBS).capitalize()} {thing}"])


def table(rng: random.Random) -> str:
    """A csv file: a header of 2-5 column names and rows under it, some columns text, at least one numbers."""
    columns = list(dict.fromkeys(stem(rng) if rng.random() < 0.3 else word(rng) for _ in range(rng.randint(2, 5))))
    makers = [rng.choice([word, person, made_up, lambda r: number(r, r.randint(1, 4))]) for _ in columns]
    makers[rng.randrange(len(columns))] = lambda r: number(r, r.randint(1, 4))
    rows = [",".join(str(make(rng)) for make in makers) for _ in range(rng.randint(2, 15))]
    return "\n".join([",".join(columns), *rows])


def settings(rng: random.Random) -> dict:
    """A json file's fields: names from the words, values text, numbers, versions, true or false."""
    values = [word, person, number, lambda r: f"{r.randint(0, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
              lambda r: r.choice(["true", "false"]), lambda r: f"{made_up(r)}.{r.choice(['com', 'org', 'net'])}"]
    return {(stem(rng) if rng.random() < 0.3 else word(rng)): rng.choice(values)(rng)
            for _ in range(rng.randint(2, 7))}
