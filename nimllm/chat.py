"""`nimllm --chat`: talk with your model, which learns the conversation when it ends.

Everything said is stored the moment it is complete (the user's line before the model answers it),
so a chat killed at any point loses nothing: the next chat learns what was left unlearned.

The prompt comes at once: torch and the model load on another thread while the user types the first
line (bench/chat_startup.py: on the H200 the imports alone took 3 of the 3.6 s to the prompt).
"""
from __future__ import annotations

import sys
from functools import partial

from nimllm.background import Background
from nimllm.config import ModelFolder
from nimllm.console import line_reader, printable
from nimllm.turns import Sampling, context_budget, decode_stream, fit_prompt, turn_bans, turn_stops

PROMPT, MORE, REPLY = "you> ", "...> ", "nimllm> "
HELP = """commands:
  /remember        learn this conversation now, then talk on
  /good, /bad      rate the last answer (a bad answer is not learned)
  /fix ANSWER      what the last answer should have been: learned in its place
  /stats           what the model has learned so far
  /quit            end the chat and learn it (also Ctrl-D, or Ctrl-C at the prompt)
a line ending with \\ continues on the next one; a block between lines of \"\"\" is one message;
Ctrl-C while the model writes stops the answer"""


def read_message(read_line) -> str | None:
    """One message: a line, lines joined by a trailing backslash, or the lines between two lines of
    triple quotes. None at the end of input."""
    line = read_line(PROMPT)
    if line is None:
        return None
    lines = []
    if line.strip() == '"""':
        while (line := read_line(MORE)) is not None and line.strip() != '"""':
            lines.append(line)
        return "\n".join(lines)
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = read_line(MORE) or ""   # the end of input ends the message; the next read ends the chat
    return "\n".join(lines + [line])


class Chat:
    """One chat session: the stored conversation, and the recent turns the model sees."""

    def __init__(self, mem, sampling: Sampling, stdout):
        self.mem, self.sampling, self.out = mem, sampling, stdout
        self.tokenizer = mem.tokenizer
        self.budget = context_budget(mem.model.cfg.block_size, sampling.max_tokens)
        self.context: list[tuple[str, str]] = []   # outlives /remember, so the talk flows on
        self.conversation = mem.store.start_conversation(kind="chat")
        self.last_answer: int | None = None        # message id that /good, /bad and /fix rate

    def say(self, *text, end="\n") -> None:
        print(*text, end=end, file=self.out, flush=True)

    def handle(self, text: str) -> bool:
        """Act on one message or command; False when the chat is over."""
        if not text.strip():
            return True
        if not text.startswith("/"):
            self.answer(text)
            return True
        command = text.split(maxsplit=1)[0]
        if command == "/quit":
            return False
        if command == "/help":
            self.say(HELP)
        elif command == "/remember":
            self.remember()
        elif command in ("/good", "/bad"):
            self.rate(command[1:])
        elif command == "/fix":
            self.rate("fix", text[len(command):].strip())
        elif command == "/stats":
            for key, value in self.mem.stats().items():
                self.say(f"  {key}: {value}")
        else:
            self.say(f"unknown command {command}; /help lists the commands")
        return True

    def answer(self, text: str) -> None:
        store = self.mem.store
        store.add_message(self.conversation, "user", text)   # before generating: a kill loses nothing said
        self.context.append(("user", text))
        reply = self.generate_reply()
        self.last_answer = store.add_message(self.conversation, "assistant", reply)
        self.context.append(("assistant", reply))
        if self.mem.lessons([self.conversation]):   # after the reply, which should not wait for it
            self.mem.warm_up_in_background()

    def generate_reply(self) -> str:
        from nimllm.generate import generate
        tok, s = self.tokenizer, self.sampling
        prompt = fit_prompt(tok, self.context, self.budget)
        ids = generate(self.mem.model, prompt, s.max_tokens, s.temperature, s.top_k, s.top_p, s.seed,
                       stop_ids=turn_stops(tok), banned_ids=turn_bans(tok), decoder=self.mem.decoder())
        pieces = []
        self.say(REPLY, end="")
        try:
            for piece in decode_stream(tok, ids):
                pieces.append(piece)   # stored as the model wrote it, shown as the terminal may see it
                self.say(printable(piece), end="")
        except KeyboardInterrupt:   # stop this answer, keep the chat and what was written
            self.say(" [stopped]", end="")
        self.say()
        return "".join(pieces)

    def rate(self, feedback: str, fix: str | None = None) -> None:
        if self.last_answer is None:
            self.say("no answer to rate yet in this conversation")
            return
        if feedback == "fix" and not fix:
            self.say("usage: /fix THE BETTER ANSWER")
            return
        self.mem.store.set_feedback(self.last_answer, feedback, fix)
        if fix:
            self.context[-1] = ("assistant", fix)   # the model should go on from the answer it should have given
        self.say({"good": "noted: a good answer", "bad": "noted: this answer will not be learned",
                  "fix": "noted: your answer will be learned instead"}[feedback])

    def end(self) -> bool:
        """End the stored conversation and learn it; False when the user said nothing to learn."""
        store = self.mem.store
        store.end_conversation(self.conversation)
        if not any(m.role == "user" for m in store.messages(self.conversation)):
            return False
        if not self.mem.lessons([self.conversation]):
            self.say("nothing to remember: nothing said here states a fact (questions and greetings are not learned)")
            return True
        self.say("remembering this conversation...", end=" ")
        self.mem.learn([self.conversation], log=self.say)   # it prints its report
        return True

    def remember(self) -> None:
        if not self.end():
            self.say("nothing to remember yet")
        self.conversation = self.mem.store.start_conversation(kind="chat")
        self.last_answer = None


def open_memory(folder: ModelFolder, device: str | None, stdout):
    """The model folder's Memory: torch imported, weights loaded, and what a killed chat left unlearned
    learned. The chat opens it in the Background while it shows its prompt; the update's warm-up
    waits for a message worth learning (Memory.warm_up_in_background)."""
    from nimllm.memory import Memory
    memory = Memory(folder, device)
    memory.learn_pending(log=partial(print, file=stdout, flush=True))
    return memory


def run_chat(folder: ModelFolder, device: str | None, sampling: Sampling, stdin=sys.stdin, stdout=sys.stdout) -> int:
    """The REPL; returns the exit code."""
    folder.require_model()
    opening = Background(open_memory, folder, device, stdout)
    print("talk to your model; /help lists the commands, /quit or Ctrl-D ends and remembers", file=stdout, flush=True)
    chat = None
    with line_reader(stdin, stdout, "chat_history") as read_line:
        while True:
            try:
                text = read_message(read_line)
            except KeyboardInterrupt:   # at the prompt: leave as /quit does
                text = None
            if text is None:
                print(file=stdout, flush=True)
                break
            chat = chat or Chat(opening.result(), sampling, stdout)
            if not chat.handle(text):
                break
    (chat or Chat(opening.result(), sampling, stdout)).end()
    return 0
