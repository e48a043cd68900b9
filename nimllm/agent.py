"""`nimllm --agent`: a local model with hands. It reads a request, plans a shell command, runs it in a
sandbox once the user says yes, reads what it printed, answers, and learns the tasks the user approves.

A turn of the model is either a call, `<|tool_call|>command<|/tool_call|>`, or an answer ending in
`<|end|>` (nimllm/tokenizer.py's template, read by nimllm/turns.py). Each call is shown with the
filter's warnings (nimllm/shell.py: a warning, not a guarantee), confirmed, run in the sandbox (nimllm/sandbox.py,
which holds without the filter), and what it printed goes back as a tool message, trimmed, with its exit
code; the model goes on until it answers or reaches the step limit. Every task is one stored
conversation of kind "agent"; /good, /bad and /fix rate it, and an approved one is learned when it
closes (nimllm/memory.py learns only approved tasks that ran commands).
"""
from __future__ import annotations

import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

from nimllm import shell
from nimllm.console import line_reader, printable
from nimllm.config import ModelFolder, UserError
from nimllm.generate import generate
from nimllm.lessons import conversation_messages
from nimllm.memory import AGENT_KINDS, Memory
from nimllm.sandbox import Limits, Sandbox, trim
from nimllm.turns import CALL, Sampling, Turn, agent_mode, context_budget, fit_prompt, read_turn, turn_stops

PROMPT, REPLY, PLAN = "you> ", "nimllm> ", "nimllm plans: "
SANDBOXED = "(sandboxed: it can change files in this folder, not .git nor anything outside)"
NOT_SANDBOXED = "(NOT sandboxed: it can do anything you can)"
HELP = """commands:
  /good            the last task went well: it will be learned
  /bad             it went wrong: it will not be learned
  /fix COMMAND     the command that should have run: it runs (once you say yes) and is learned instead
  /trust           run read-only commands without asking from now on (only with the sandbox)
  /quit            end (also Ctrl-D); approved tasks are learned as they close
when a command is planned: y runs it, n skips it and ends the task, e lets you edit it first,
a runs it and trusts read-only commands from now on (with the sandbox)"""


class Agent:
    """One agent session: the model, the sandbox, the store, the user's answers."""

    def __init__(self, mem: Memory, sandbox: Sandbox, sampling: Sampling, read_line, out, yes: bool = False,
                 max_steps: int = 5, retries: int = 2):
        self.mem, self.sandbox, self.sampling, self.read_line, self.out = mem, sandbox, sampling, read_line, out
        self.yes, self.trusted, self.max_steps, self.retries = yes, False, max_steps, retries
        self.tokenizer, self.store = mem.tokenizer, mem.store
        self.task: int | None = None              # the stored conversation of the current task
        self.last_model_message: int | None = None

    def say(self, *text, end="\n") -> None:
        print(*text, end=end, file=self.out, flush=True)

    # ---- one task ------------------------------------------------------------------------------

    def do(self, request: str) -> str | None:
        """Work on a new request; the answer, or None when the task ended without one."""
        self.close_task()
        self.task = self.store.start_conversation(kind="agent")
        self.store.add_message(self.task, "user", request, {"agent": True})
        return self.work([("user", request)])

    def work(self, messages: list[tuple[str, str]]) -> str | None:
        """Turns of the model until it answers, its output cannot be read, the user says no to a
        command, or the step limit."""
        for _ in range(self.max_steps):
            turn = self.next_turn(messages)
            if turn.kind == "malformed":   # kept for the record, never learned
                bad = self.store.add_message(self.task, "assistant", turn.raw, {"malformed": turn.text})
                self.store.set_feedback(bad, "bad")
                self.say(f"{REPLY}[the model's output could not be read as a command or an answer: {turn.text}]")
                return None
            if turn.kind == "answer":
                self.last_model_message = self.store.add_message(self.task, "assistant", turn.text)
                self.say(f"{REPLY}{printable(turn.text)}")
                return turn.text
            if not self.call(turn.text, messages):
                return None
        self.say(f"{REPLY}[stopped after {self.max_steps} steps without an answer]")
        return None

    def fix(self, command: str) -> str | None:
        """/fix: the task's commands and answer so far are let go, the user's command runs (once
        confirmed) as the task's first step, and the model answers from what it really printed."""
        stored = self.store.messages(self.task)
        for m in stored:
            if m.role in ("assistant", "tool_call") and m.feedback != "bad":
                self.store.set_feedback(m.id, "bad")
        messages = [("user", stored[0].content)]
        if not self.call(command, messages, fixed=True):
            return None
        return self.work(messages)

    def next_turn(self, messages: list[tuple[str, str]]) -> Turn:
        """The model's next turn; a malformed one is asked again with more randomness, a few times."""
        tok, first = self.tokenizer, self.sampling
        # the mode and the request stay, and the latest steps; generate slides past the rest
        budget = context_budget(self.mem.model.cfg.block_size, first.max_tokens)
        prompt = fit_prompt(tok, agent_mode(messages), budget, keep=2)
        stops = turn_stops(tok, calls=True)
        # a task's first turn is a command: the agent looks before it answers (an answer about the folder
        # written before anything ran is made up, as small models did: "The first line of numbers.txt is 41")
        opened = [] if any(role == "tool_call" for role, _ in messages) else [tok.special(CALL)]
        for attempt in range(self.retries + 1):
            s = first if attempt == 0 else replace(first, temperature=max(first.temperature, 0.8),
                                                   seed=None if first.seed is None else first.seed + attempt)
            out = list(opened)
            for token in generate(self.mem.model, prompt + opened, s.max_tokens, s.temperature, s.top_k, s.top_p,
                                  s.seed, decoder=self.mem.decoder()):
                out.append(token)   # the closing token too: it says what the turn was
                if token in stops:
                    break
            turn = read_turn(tok, out)
            if turn.kind != "malformed":
                break
        return turn

    def call(self, command: str, messages: list[tuple[str, str]], fixed: bool = False) -> bool:
        """Show a planned command (or the user's, `fixed`), check it, ask, run it, and put what it
        printed in the context. False when the task ends here (refused /fix, or the user said no)."""
        self.say(f"{PLAN}{printable(command)}")
        refused = self.refusal(command)
        if refused:
            self.record(command, f"[refused: {refused}]", {"refused": refused}, bad=True)
            self.say(f"  refused: {refused}")
            messages += [("tool_call", command), ("tool", f"[refused: {refused}]")]
            return not fixed
        yes, to_run = self.confirm(command, self.warn(command))
        if not yes:
            self.record(command, "[not run: the user said no]", {"declined": True}, bad=True)
            self.say("  not run; the task ends here")
            return False
        result = self.sandbox.run(to_run)
        self.show(result.output, result.status())
        observation = result.observation()
        self.record(to_run, observation, {"exit_code": result.exit_code, "status": result.status(),
                                          "seconds": round(result.seconds, 3), "sandboxed": result.sandboxed,
                                          "output": result.output[:65536]}, original=None if fixed else command)
        messages += [("tool_call", to_run), ("tool", observation)]
        return True

    def refusal(self, command: str) -> str | None:
        """Why a command is not run whatever the user says, or None: hidden characters (what the user
        confirms would not be what runs), or with --yes anything the filter warns about (nobody is
        there to read the warning)."""
        warned = shell.warnings(command, self.sandbox.folder) if self.yes else []
        return shell.refusal(command) or (f"--yes runs nothing the filter warns about: {'; '.join(warned)}"
                                          if warned else None)

    def warn(self, command: str) -> list[str]:
        """Show what the filter recognises in a command; it recognises only some dangers."""
        warned = shell.warnings(command, self.sandbox.folder)
        for warning in warned:
            self.say(f"  warning: {warning}")
        return warned

    def confirm(self, command: str, warned: list[str]) -> tuple[bool, str]:
        """(whether to run, the command to run, perhaps edited): asked unless --yes or trusted
        read-only with no warning, and always asked without the sandbox."""
        read_only = self.sandbox.active and not warned and shell.read_only(command)
        if self.sandbox.active and (self.yes or (self.trusted and read_only)):   # never unsandboxed
            self.say("  (runs without asking: " + ("--yes" if self.yes else "you trust what the filter reads as "
                                                   "read-only; the sandbox holds either way") + ")")
            return True, command
        options = "y/n/e(dit)/a(lways for read-only)" if read_only else "y/n/e(dit)"
        scope = SANDBOXED if self.sandbox.active else NOT_SANDBOXED
        while True:
            answer = (self.read_line(f"run it? {scope} [{options}] ") or "n").strip().lower()[:1]
            if answer == "a" and read_only:
                self.trusted = True
                self.say("  read-only commands now run without asking")
                return True, command
            if answer in ("y", "n"):
                return answer == "y", command
            if answer == "e":
                edited = (self.read_line("command> ") or "").strip()
                if not edited:
                    return False, command
                refused = shell.refusal(edited)
                if refused:
                    self.say(f"  refused: {refused}")
                    continue
                self.warn(edited)
                return True, edited

    def record(self, command: str, observation: str, meta: dict, bad: bool = False, original: str | None = None) -> None:
        """Store a call and what came back. A refused or declined call is marked bad (never learned);
        one the user edited (`original`: the model's) or wrote (None) is marked fixed: learned, and an
        approval of the task."""
        call = self.store.add_message(self.task, "tool_call", original or command)
        if bad:
            self.store.set_feedback(call, "bad")
        elif original != command:
            self.store.set_feedback(call, "fix", command)
        self.store.add_message(self.task, "tool", observation, meta)
        self.last_model_message = call

    def show(self, output: str, status: str) -> None:
        shown = output.rstrip()
        if shown:
            self.say("\n".join("  " + line for line in trim(shown, 40, 4000).splitlines()))
        if status != "exit 0":
            self.say(f"  [{status}]")

    # ---- the user's verdicts -------------------------------------------------------------------

    def rate(self, feedback: str) -> None:
        if self.last_model_message is None:
            self.say("no command or answer to rate yet")
            return
        self.store.set_feedback(self.last_model_message, feedback)
        self.say({"good": "noted: this task will be learned when it closes",
                  "bad": "noted: this task will not be learned"}[feedback])

    def close_task(self) -> None:
        """End the current task, and learn it if the user approved it."""
        if self.task is None:
            return
        task, self.task, self.last_model_message = self.task, None, None
        self.store.end_conversation(task)
        if conversation_messages(self.store.messages(task)):
            self.say("learning this task...", end=" ")
            self.mem.learn([task], log=self.say)

    def handle(self, text: str) -> bool:
        """Act on one line; False when the session is over."""
        command, _, rest = text.strip().partition(" ")
        if not command:
            return True
        if command == "/quit":
            return False
        if command == "/help":
            self.say(HELP)
        elif command in ("/good", "/bad"):
            self.rate(command[1:])
        elif command == "/fix":
            if self.task is None or not rest.strip():
                self.say("usage, after a task: /fix THE COMMAND THAT SHOULD HAVE RUN")
            else:
                self.fix(rest.strip())
        elif command == "/trust":
            self.trusted = self.sandbox.active
            self.say("read-only commands now run without asking" if self.trusted else
                     "without the sandbox every command needs your yes")
        elif command.startswith("/"):
            self.say(f"unknown command {command}; /help lists the commands")
        else:
            self.do(text.strip())
        return True


def run_agent(folder: ModelFolder, workdir: Path, device: str | None, sampling: Sampling, yes: bool = False,
              max_steps: int = 5, seconds: float = 10.0, stdin=sys.stdin, stdout=sys.stdout) -> int:
    """The REPL; returns the exit code. The sandbox is checked before the model is loaded, so --yes
    without one fails at once."""
    sandbox = Sandbox(workdir, hide=[folder.root], limits=Limits(seconds=seconds))
    if yes and not sandbox.active:
        raise UserError(f"--yes runs commands without asking, which needs the sandbox: {sandbox.reason}")
    say = partial(print, file=stdout, flush=True)
    mem = Memory(folder, device, kinds=AGENT_KINDS)
    mem.learn_pending(log=say)
    say(f"working in {sandbox.folder}")
    say(sandbox.reason if sandbox.active else
        f"NO SANDBOX: {sandbox.reason}. Commands run as you, with only time and size limits; "
        "every one is shown and needs your yes.")
    with line_reader(stdin, stdout, "agent_history") as read_line:
        agent = Agent(mem, sandbox, sampling, read_line, stdout, yes, max_steps)
        agent.say("ask for something to do in this folder; /help lists the commands, /quit or Ctrl-D ends")
        while True:
            try:
                line = agent.read_line(PROMPT)
            except KeyboardInterrupt:   # at the prompt: leave, as /quit does
                line = None
            if line is None:
                break
            try:
                if not agent.handle(line):
                    break
            except KeyboardInterrupt:   # while the model writes or a command runs: stop this task
                agent.say(" [stopped]")
    agent.say()
    agent.close_task()
    return 0
