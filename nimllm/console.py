"""Reading a person's lines, on a terminal or piped, for the faces that talk (chat, agent)."""
from __future__ import annotations

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
