"""What a shell command seems to do, read from its words: warnings about what the filter recognises
(deleting a tree, writing outside the folder, running text made at run time, ...), whether it only
reads (it may then run without asking once the user trusts read-only commands), and the one refusal
that holds whatever the user says: hidden characters, since then what the user confirms is not what
runs.

A warning, never a guarantee: shell syntax has too many ways to hide an action ($(echo rm), base64
piped into sh, eval, python -c), so a command the filter says nothing about is not thereby safe. The
boundary is the sandbox (nimllm/sandbox.py), tested against hostile commands without this filter.
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
# words before the real command name: keywords, wrappers (whose options and numbers are skipped too)
PREFIXES = {"do", "then", "else", "elif", "if", "while", "until", "!", "{", "time", "exec", "command", "builtin",
            "nohup", "nice", "env", "xargs", "timeout", "setsid", "stdbuf"}
ASSIGNMENT = re.compile(r"^\w+=")

RUNS_MADE_TEXT = "runs text made at run time as a command (eval, a pipe into a shell, $(...) as the name)"
PATTERNS = (   # (regular expression on the whole command, the warning)
    (re.compile(r"(\S+)\s*\(\)\s*\{[^}]*\1\s*\|\s*\1\s*&"), "a fork bomb"),
    (re.compile(r"\|\s*(sudo\s+)?(env\s+)?\S*\b(sh|bash|zsh|dash|python\d?(\.\d+)?|perl|ruby|node)(\s+-\S*)*\s*($|[;&|)])"),
     RUNS_MADE_TEXT),   # an interpreter given no script reads its program from the pipe
    (re.compile(r"\b(sh|bash|zsh|dash)\b[^|;&]*(<\(|\$\(|`)"), RUNS_MADE_TEXT),
    (re.compile(r"(^|[;&|({]|\bdo|\bthen)\s*(eval|source|\.)\s"), RUNS_MADE_TEXT),
    (re.compile(r"\b(rmtree|remove|removedirs|unlink|rmdir)\s*\("), "deletes files from a program (rmtree, unlink)"),
    (re.compile(r"\bgit\s+(-c\s|init|config|clone|submodule|worktree)"),
     "makes or configures a git repository, whose config and hooks git runs as code"),
)
ALWAYS_WARNED = {"mkfs": "formats a disk", "shutdown": "stops the machine", "reboot": "restarts the machine",
                 "halt": "stops the machine", "poweroff": "stops the machine", "sudo": "asks for root",
                 "su": "asks for root"}
SETID_MODE = re.compile(r"^([ugoa]*[+=][rwxXt]*s|[0-7]?[2-7][0-7]{3})$")
WHOLE_TREE = {"/", "/*", "~", "~/", "$HOME", ".", "./", "*", "..", "../"}

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
    """Where a path leads from base (following links), None when only the shell can tell ($VAR)."""
    if "$" in path or "`" in path:
        return None
    return Path(os.path.realpath(base / os.path.expanduser(path)))


def outside(path: str, base: Path, folder: Path) -> bool:
    """Whether a path a command would write, from base, is known to be outside the working folder."""
    resolved = resolve(path, base)
    return path not in SAFE_TARGETS and resolved is not None and not resolved.is_relative_to(folder)


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


def command_words(cmd: list[str]) -> list[str]:
    """A simple command from its real name on: keywords, assignments and wrappers (nice, xargs, ...)
    with their options and numbers skipped."""
    i, wrapped = 0, False
    while i < len(cmd) - 1 and (cmd[i] in PREFIXES or ASSIGNMENT.match(cmd[i])
                                or wrapped and (cmd[i].startswith("-") or cmd[i][0].isdigit())):
        wrapped = wrapped or cmd[i] in PREFIXES
        i += 1
    return cmd[i:]


def refusal(command: str) -> str | None:
    """Why this command is refused whatever the user says, or None: only hidden characters, since
    then what the user reads and confirms is not what runs. Everything else is a warning."""
    if hidden_characters(command):
        return "control or invisible characters, which make it read differently than it runs"
    return None


def warnings(command: str, folder: Path) -> list[str]:
    """What the filter recognises as dangerous in a command, each once. An empty list says only that
    it recognised nothing: the sandbox, not this list, keeps the host safe."""
    found = [why for pattern, why in PATTERNS if pattern.search(command)]
    folder = Path(folder).resolve()
    base = folder   # where relative paths start, moved by cd; None once only the shell can tell
    for cmd in simple_commands(words(command) or []):
        cmd = command_words(cmd)
        name = Path(cmd[0]).name
        if name == "cd":
            base = resolve(cmd[1], base) if len(cmd) > 1 and base else None
            continue
        found += simple_warnings(cmd, name)
        found += [f"writes outside the working folder ({path})" for path in written_paths(cmd)
                  if base and outside(path, base, folder)]
    return list(dict.fromkeys(found))


def simple_warnings(cmd: list[str], name: str) -> list[str]:
    """What one simple command is recognised to do, from its name and arguments."""
    found = [f"{name} {why}" for warned, why in ALWAYS_WARNED.items() if name == warned or name.startswith(warned + ".")]
    if "$" in cmd[0] or "`" in cmd[0]:
        found.append(RUNS_MADE_TEXT)
    if name == "rm" and (WHOLE_TREE & set(cmd[1:]) or "--no-preserve-root" in cmd):
        found.append("deletes a whole tree")
    if name == "find" and "-delete" in cmd:
        found.append("deletes every file find matches")
    if name == "find" and {"-exec", "-execdir", "-ok", "-okdir"} & set(cmd):
        found.append("runs a command on every file find matches")
    if name == "chmod" and any(SETID_MODE.match(a) for a in cmd[1:]):
        found.append("sets a setuid or setgid bit")
    return found


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
