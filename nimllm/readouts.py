"""Reading what a command printed, for the answers of the agent-skill corpus (nimllm/tasks.py): the
number, the names, the first line or the most frequent entry an answer carries ('3 markdown files:
a.md, b.md and c.md'); None where the output does not hold what the answer needs.
"""
from __future__ import annotations

import re


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
