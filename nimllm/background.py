"""Work on another thread whose outcome the caller collects later: the chat opens its model this way
while it shows its prompt, and a memory warms up its update while the user types."""
from __future__ import annotations

import threading


class Background(threading.Thread):
    """fn(*args) on another thread; `result` waits for it and returns what it returned, or raises what
    it raised on the caller's thread, where the command line reports it."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.value, self.error = fn, args, None, None
        self.start()

    def run(self):
        try:
            self.value = self.fn(*self.args)
        except BaseException as e:
            self.error = e

    def result(self):
        self.join()
        if self.error:
            raise self.error
        return self.value
