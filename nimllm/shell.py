"""What a shell command would do, read from its words: refused outright, read-only (may run without
asking once the user trusts read-only commands), or anything else (asks first).

String checks are a convenience and a second line: shell syntax has too many ways to hide an
action, so whatever slips through still meets the sandbox (nimllm/sandbox.py), which must hold alone.
Both checks err on the careful side: a command they cannot read is not read-only.
"""
from __future__ import annotations

import os
import re
import shlex
import unicodedata
from itertools import pairwise
from pathlib import Path

OPERATORS = {"|", "||", "&&", ";", "&", ";;", "(", ")"}
REDIRECTS = {">", ">>", ">|", "&>", "&>>", ">&", "<>"}
SAFE_TARGETS = {"/dev/null", "/dev/stdout", "/dev/stderr"}

# commands whose last argument, or every argument, is a path they write
WRITES_LAST = {"cp", "mv", "ln", "install", "rsync"}
WRITES_ALL = {"touch", "mkdir", "rm", "rmdir", "chmod", "chown", "chgrp", "truncate", "shred", "tee", "unlink"}

FORK_BOMB = re.compile(r"(\S+)\s*\(\)\s*\{[^}]*\1\s*\|\s*\1\s*&")
DOWNLOAD_TO_SHELL = re.compile(
    r"\b(curl|wget|fetch)\b[^|;&]*\|\s*(sudo\s+)?(env\s+)?\S*(sh|python\d?(\.\d+)?|perl|ruby|node)\b"
    r"|\b(sh|bash|zsh|python\d?)\b[^|;&]*(\$\(|<\(|`)\s*(curl|wget|fetch)\b")
ALWAYS_REFUSED = {"mkfs": "formats a disk", "shutdown": "stops the machine", "reboot": "restarts the machine",
                  "halt": "stops the machine", "poweroff": "stops the machine", "sudo": "asks for root",
                  "su": "asks for root"}
SETID_MODE = re.compile(r"^([ugoa]*[+=][rwxXt]*s|[0-7]?[2-7][0-7]{3})$")

READ_ONLY = {"ls", "cat", "head", "tail", "wc", "grep", "egrep", "fgrep", "find", "sed", "sort", "uniq", "cut",
             "tr", "date", "pwd", "echo", "printf", "du", "df", "stat", "file", "basename", "dirname", "realpath",
             "whoami", "id", "uname", "nl", "tac", "rev", "comm", "diff", "cmp", "md5sum", "sha256sum", "git",
             "true", "false", "test", "expr", "seq", "column"}
FIND_ACTIONS = {"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"}
GIT_READ_ONLY = {"status", "log", "show", "diff", "rev-list", "rev-parse", "ls-files", "shortlog", "blame"}
SED_PRINT = re.compile(r"^(\d+|\$)?(,(\d+|\$))?p$|^/[^/]*/p$")


def words(command: str) -> list[str] | None:
    """Shell words and operators, or None when the command cannot be read (unbalanced quotes)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return None


def simple_commands(tokens: list[str]) -> list[list[str]]:
    """The commands of a pipeline or list, each its words with redirections left in."""
    commands, current = [], []
    for token in tokens:
        if token in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def resolve(path: str, base: Path) -> Path | None:
    """Where a path leads from base (following links), None when only the shell can tell ($VAR, ~)."""
    if path.startswith("~") or "$" in path or "`" in path:
        return None
    return Path(os.path.realpath(base / path))


def outside(path: str, base: Path, folder: Path) -> bool:
    """Whether a path a command would write, from base, is not inside the working folder."""
    if path in SAFE_TARGETS:
        return False
    resolved = resolve(path, base)
    return resolved is None or not resolved.is_relative_to(folder)


def written_paths(command: list[str]) -> list[str]:
    """Paths a simple command writes: redirection targets and the destinations of file commands."""
    paths = [target for op, target in pairwise(command) if op in REDIRECTS and not target.isdigit()]
    args = [w for w in command[1:] if w not in REDIRECTS and not w.startswith("-")]
    name = Path(command[0]).name
    if name in WRITES_LAST and args:
        paths.append(args[-1])
    elif name in WRITES_ALL:
        paths += args
    elif name == "dd":
        paths += [w[3:] for w in command if w.startswith("of=")]
    elif name == "sed" and any(w.startswith("-i") or w == "--in-place" for w in command):
        paths += args[1:]
    return paths


def refusal(command: str, folder: Path) -> str | None:
    """Why this command is refused whatever the user says, or None. The patterns: hidden characters,
    writing outside the working folder, deleting a whole tree from the top, fork bombs, running a
    download, formatting disks, stopping the machine, asking for root, and setting setuid bits."""
    folder = Path(folder).resolve()
    if hidden_characters(command):
        return "control or invisible characters, which make it read differently than it runs"
    if FORK_BOMB.search(command):
        return "a fork bomb"
    if DOWNLOAD_TO_SHELL.search(command):
        return "runs a script straight from the network"
    tokens = words(command)
    if tokens is None:
        return None   # the shell will not run it either
    base = folder   # where relative paths start, moved by cd
    for cmd in simple_commands(tokens):
        name = Path(cmd[0]).name
        if name == "cd":
            base = resolve(cmd[1], base) if len(cmd) > 1 else None
            if base is None:
                return "changes to a folder only the shell can tell, then may write there"
            continue
        for refused, why in ALWAYS_REFUSED.items():
            if name == refused or name.startswith(refused + "."):
                return f"{name} {why}"
        if name == "rm" and any(a in ("/", "/*", "~", "~/", "$HOME", ".", "./", "*", "..", "../") for a in cmd[1:]):
            return "deletes a whole tree"
        if name == "rm" and "--no-preserve-root" in cmd:
            return "deletes a whole tree"
        if name == "chmod" and any(SETID_MODE.match(a) for a in cmd[1:]):
            return "sets a setuid or setgid bit"
        for path in written_paths(cmd):
            if outside(path, base, folder):
                return f"writes outside the working folder ({path})"
    return None


def hidden_characters(command: str) -> bool:
    """Control or invisible characters, which can make a command read differently than it runs."""
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in command)


def read_only(command: str) -> bool:
    """Whether every part of the command only reads: each simple command on the list above with no
    option that writes or runs something, no output redirection but to /dev/null, and no
    substitution, expansion or background job anywhere."""
    if hidden_characters(command) or re.search(r"[`]|\$[\w({\[]|<\(|>\(|<<", command):
        return False
    stripped = re.sub(r"\s[12]?>\s*/dev/null\b", " ", command)
    tokens = words(stripped)
    if not tokens or "&" in tokens or "(" in tokens:
        return False
    return all(read_only_simple(cmd) for cmd in simple_commands(tokens))


def read_only_simple(cmd: list[str]) -> bool:
    name, args = cmd[0], cmd[1:]
    if name not in READ_ONLY or any(a in REDIRECTS for a in cmd):
        return False
    if name == "find":
        return not FIND_ACTIONS & set(args)
    if name == "sed":
        scripts = [a for a in args if not a.startswith("-")]
        return "-n" in args and bool(scripts) and SED_PRINT.match(scripts[0]) is not None \
            and not any(a.startswith("-i") or a.startswith("--in-place") for a in args)
    if name == "sort":
        return not any(a.startswith("-o") or a.startswith("--output") for a in args)
    if name == "uniq":
        return len([a for a in args if not a.startswith("-")]) <= 1   # a second name is an output file
    if name == "date":
        return not any(a.startswith("-s") or a.startswith("--set") for a in args)
    if name == "git":
        return bool(args) and args[0] in GIT_READ_ONLY and not any(
            a.startswith(("--output", "--ext-diff", "--exec", "-c", "--textconv")) for a in args[1:])
    return True
