"""The terminal side of the faces that talk (chat, agent, generate): reading a person's lines, on a
terminal or piped, and making what a model writes safe to show."""
from __future__ import annotations

import re
import sys
from contextlib import contextmanager, suppress

from nimllm.config import nimllm_home


@contextmanager
def line_reader(stdin, stdout, history_name: str):
    """A function prompt -> line (None at the end of input). On a terminal, readline's editing and a
    history kept across sessions in $NIMLLM_HOME/<history_name>; otherwise plain lines, echoed after
    their prompt so that a piped session's transcript reads as a typed one does."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            import readline
        except ImportError:   # not on every platform; input() then still works, without history
            readline = None
        history = nimllm_home() / history_name
        if readline and history.exists():
            readline.read_history_file(history)

        def read_line(prompt):
            try:
                return input(prompt)
            except EOFError:
                return None
        try:
            yield read_line
        finally:
            if readline:
                with suppress(OSError):   # history is a convenience: never fail a chat over it
                    history.parent.mkdir(parents=True, exist_ok=True)
                    readline.set_history_length(1000)
                    readline.write_history_file(history)
    else:
        def read_line(prompt):
            stdout.write(prompt)
            stdout.flush()
            line = stdin.readline()
            if not line:
                return None
            stdout.write(line if line.endswith("\n") else line + "\n")
            return line.rstrip("\r\n")
        yield read_line


# ---- text that cannot drive a terminal ---------------------------------------------------------

ESCAPE_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def printable(text: str) -> str:
    """`text` as it may reach a terminal: escape sequences (colours, cursor moves, window titles, OSC
    links) removed, other control and invisible characters (C0 and C1 controls, bidi overrides,
    zero-width spaces) written out as \\xNN or \\uNNNN; newlines and tabs kept. A model taught such
    bytes could otherwise rewrite the user's screen, title or clipboard, so every path that shows a
    model's words goes through this. Streamed text is filtered piece by piece: a sequence cut between
    two pieces shows as text (its ESC written out), never as a command to the terminal."""
    text = ESCAPE_SEQUENCE.sub("", text.replace("\r\n", "\n"))
    return INVISIBLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)
