"""How often does the agent do what was asked, in words nobody trained it on? Requests written by
hand about hand-written folders, each checked against the folder, before and after the model learns
from its own successful episodes.

    python3 bench/agent.py --model ~/.nimllm/models/agent-103m --learn 45 --device cuda \
        --out bench/results/agent_103m_h200.json

The requests (bench/agent_requests.jsonl, about the folders of bench/agent_folders.json) are written
by hand and never read by the corpus generator (nimllm/tasks.py; tests/test_tasks.py checks that no
request text is shared). Groups: "taught kinds" (kinds the corpus teaches, in other words),
"untaught kinds" (kinds it never generates: new combinations of what it teaches) and "generated"
(`--generated N` requests from the generator itself, in new scratch folders: the corpus's own
distribution, for reference). Each request has a check: "answer" (the final answer holds what the
reference command prints, and one of the model's commands printed it too, so a number guessed from
the wrong command fails), "shown" (one of the model's commands printed the reference's lines, in
order, or the answer holds them) or "files" (a hand-written shell test of the folder passes).
The agent runs as `nimllm --agent --yes` runs (sandboxed, greedy, at most --max-steps turns). Then
it works through --learn generated requests, every success approved and learned as /good does
(--fix: every failure corrected with /fix and the reference command), and is asked again.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import common  # noqa: E402  (bench/common.py)
from nimllm import checkpoint, skills  # noqa: E402
from nimllm.agent import Agent  # noqa: E402
from nimllm.config import MemoryConfig, ModelFolder, UserError, memory_config  # noqa: E402
from nimllm.memory import AGENT_KINDS, Memory  # noqa: E402
from nimllm.sandbox import Sandbox  # noqa: E402
from nimllm.tasks import KINDS  # noqa: E402
from nimllm.turns import Sampling  # noqa: E402

HERE = Path(__file__).resolve().parent
REQUESTS, FOLDERS = HERE / "agent_requests.jsonl", HERE / "agent_folders.json"
GROUPS = ("taught kinds", "untaught kinds", "generated")


@dataclass
class BenchTask:
    request: str
    kind: str
    group: str
    check: str                                  # "answer", "shown" or "files"
    ref: str                                    # the reference command (with "files": one that does the task)
    make: Callable[[Path], Path]                # builds the task's folder under a parent; returns it
    verify: Callable[[Path], bool] | None = None


# ---- the hand-written requests and folders --------------------------------------------------------------

def build_folder(spec: dict, root: Path) -> Path:
    """A hand-written folder (see bench/agent_folders.json) at root."""
    root.mkdir(parents=True)
    for rel, content in spec["files"].items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        elif "repeat" in content:
            path.write_text(content["repeat"] * content["times"])
        else:
            with tarfile.open(path, "w:gz") as tar:
                for name, text in content["tar"].items():
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(text.encode()), 1.7e9
                    tar.addfile(info, io.BytesIO(text.encode()))
    now = time.time()
    for rel in spec["files"]:
        days = spec.get("ages", {}).get(rel, 400)
        os.utime(root / rel, (now - days * 86400,) * 2)
    if "git" in spec:
        make_repo(spec["git"], root)
    return root


def make_repo(spec: dict, root: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": spec["author"], "GIT_COMMITTER_NAME": spec["author"],
           "GIT_AUTHOR_EMAIL": "author@example.org", "GIT_COMMITTER_EMAIL": "author@example.org",
           "GIT_CONFIG_GLOBAL": "/dev/null"}
    git = lambda *args: subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)  # noqa: E731
    git("init", "-q", "-b", "main")
    for message, changed in spec["commits"]:
        if changed:
            with open(root / changed, "a") as f:
                f.write(f"{message}\n")
        git("add", "-A")
        git("commit", "-q", "-m", message)
    for rel in spec.get("dirty", []):
        with open(root / rel, "a") as f:
            f.write("# work in progress\n")


def shell_check(command: str) -> Callable[[Path], bool]:
    return lambda root: Sandbox(root).run(command).exit_code == 0


def hand_written(limit: int | None = None) -> list[BenchTask]:
    """The hand-written requests (every one, or `limit` spread evenly over the file)."""
    folders = json.loads(FOLDERS.read_text())["folders"]
    rows = [json.loads(line) for line in REQUESTS.read_text().splitlines() if line.strip()]
    if limit is not None and limit < len(rows):
        rows = [rows[i * len(rows) // limit] for i in range(limit)]
    return [BenchTask(r["request"], r["kind"], "taught kinds" if r.get("taught", True) else "untaught kinds",
                      r["check"], r["ref"], lambda parent, spec=folders[r["folder"]], name=r["folder"]:
                      build_folder(spec, Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent)) / name),
                      shell_check(r["verify"]) if "verify" in r else None)
            for r in rows]


def generated(n: int, seed: int) -> list[BenchTask]:
    """n requests of the corpus generator, each kind in turn (in an order drawn from the seed, so that
    n under the number of kinds is a sample of all of them, not the first n), each in a scratch folder
    of its own."""
    tasks, kinds = [], list(KINDS.values())
    random.Random(seed).shuffle(kinds)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n * 20):
            if len(tasks) == n:
                break
            kind = kinds[len(tasks) % len(kinds)]
            rng = random.Random(seed + i)
            s = skills.make_scratch(rng, Path(tmp))
            request = kind.make(rng, s)
            if request is None:
                continue
            ran = Sandbox(s.root).run(request.command)
            printed_a_result = ran.exit_code <= 1 and ran.output.strip()   # not an error (git outside a repository)
            if ran.exit_code not in request.ok_exits or request.check != "files" and not printed_a_result:
                continue   # an answer to check needs a result printed
            folder_seed = seed + i
            tasks.append(BenchTask(request.text, request.kind, "generated",
                                   "files" if request.check == "files" else "answer", request.command,
                                   lambda parent, fs=folder_seed: skills.make_scratch(random.Random(fs), parent).root,
                                   request.verify))
    return tasks


# ---- one attempt ------------------------------------------------------------------------------------------

def lines_of(text: str) -> list[str]:
    return [line.strip().removeprefix("./") for line in text.splitlines() if line.strip()]


def said(text: str, expected: str) -> bool:
    """Whether `expected` is in `text` as a whole (the count 2 is not in "12 files")."""
    return re.search(rf"(?<![\w.]){re.escape(expected.lower())}(?![\w])", text.lower()) is not None


def shows(output: str, expected: list[str]) -> bool:
    """Whether the output holds the expected lines, in order, each within one of its lines."""
    remaining = iter(lines_of(output))
    return bool(expected) and all(any(line in have for have in remaining) for line in expected)


def printed(task: BenchTask, expected: list[str], output: str) -> bool:
    """Whether a command's output holds the task's result."""
    return shows(output, expected) if task.check == "shown" else bool(expected) and said(output, expected[0])


def attempt(mem: Memory, task: BenchTask, parent: Path, max_steps: int, learn: bool = False,
            fix: bool = False) -> dict:
    """Run the agent on one task in a new copy of its folder and check the outcome; with `learn` a
    success is approved and learned, and with `fix` a failure is corrected with the reference
    command. The user says yes to everything."""
    folder = task.make(parent)
    expected = [] if task.check == "files" else lines_of(Sandbox(folder).run(task.ref).output)
    transcript = io.StringIO()
    agent = Agent(mem, Sandbox(folder), Sampling(max_tokens=64, temperature=0.0, seed=0),
                  read_line=lambda prompt: "y", out=transcript, yes=True, max_steps=max_steps)
    start = time.time()
    answer = agent.do(task.request)
    messages = mem.store.messages(agent.task)
    calls = [m.content for m in messages if m.role == "tool_call"]
    runs = [m.meta for m in messages if m.role == "tool" and "output" in (m.meta or {})]
    outputs = [r["output"] for r in runs]
    if task.check == "files":
        success = task.verify(folder)
    elif task.check == "shown":
        success = any(shows(out, expected) for out in outputs) or all(said(answer or "", e) for e in expected)
    else:
        success = bool(expected) and said(answer or "", expected[0]) and any(said(out, expected[0]) for out in outputs)
    failed = [i for i, r in enumerate(runs) if r["exit_code"] != 0]
    fixed = False
    if learn and success:
        mem.store.set_feedback(messages[-1].id, "good")
    elif learn and fix:   # as a user would: /fix with the command that should have run
        agent.fix(task.ref)
        fixed = True
    agent.close_task()
    return {"kind": task.kind, "group": task.group, "check": task.check, "request": task.request, "reference": task.ref,
            "expected": expected, "commands": calls, "exit_codes": [r["exit_code"] for r in runs], "answer": answer,
            "success": success, "within_3": success and len(calls) <= 3,
            "first_right": bool(calls) and first_right(task, calls[0], outputs[:1], expected, parent),
            "carries": task.check == "answer" and bool(expected) and said(answer or "", expected[0]),
            "well_formed": "could not be read" not in transcript.getvalue(),
            "ran_command": bool(calls), "answered_without_command": answer is not None and not calls,
            "failed_command": bool(failed), "recovered": bool(failed) and success and failed[0] < len(runs) - 1,
            "fixed": fixed, "seconds": round(time.time() - start, 2)}


def first_right(task: BenchTask, command: str, first_output: list[str], expected: list[str], parent: Path) -> bool:
    """Whether the first command alone does the task: its output holds the result, or (changing files)
    run alone in a new copy of the folder it leaves the folder as asked."""
    if task.check != "files":
        return bool(first_output) and printed(task, expected, first_output[0])
    folder = task.make(parent)
    Sandbox(folder).run(command)
    return task.verify(folder)


def summary(rows: list[dict]) -> dict:
    def share(key, among=rows):
        return round(sum(r[key] for r in among) / len(among), 4) if among else None
    failing = [r for r in rows if r["failed_command"]]
    return {"tasks": len(rows), "success": share("success"), "within_3": share("within_3"),
            "first_right": share("first_right"), "carries": share("carries", [r for r in rows if r["check"] == "answer"]),
            "well_formed": share("well_formed"), "ran_command": share("ran_command"),
            "answered_without_command": sum(r["answered_without_command"] for r in rows),
            "failed_command": len(failing), "recovered": sum(r["recovered"] for r in failing),
            "by_kind": {k: share("success", [r for r in rows if r["kind"] == k]) for k in sorted({r["kind"] for r in rows})}}


def evaluate(mem: Memory, tasks: list[BenchTask], parent: Path, args, learn: bool = False) -> dict[str, list[dict]]:
    rows = [attempt(mem, t, parent, args.max_steps, learn, learn and args.fix) for t in tasks]
    return {g: [r for r in rows if r["group"] == g] for g in GROUPS if any(r["group"] == g for r in rows)}


def memory_settings(text: str) -> dict:
    """"default", or changes to the model's memory settings (nimllm.config.memory_config): "lr=1e-4,steps=4"."""
    if text == "default":
        return {}
    types = {f.name: f.type for f in fields(MemoryConfig)}
    changes = dict(item.split("=", 1) for item in text.split(","))
    if not set(changes) <= set(types):
        raise argparse.ArgumentTypeError(f"unknown memory settings {sorted(set(changes) - set(types))}")
    parse = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}
    return {k: parse.get(types[k], str)(v) for k, v in changes.items()}


def learn_and_ask_again(base: Path, folder: Path, changes: dict, tasks: list[BenchTask], args) -> dict:
    """A fresh copy of the base model (its Fisher too) works through the learning set with its memory
    settings so changed, learning its successes (and with --fix its corrected failures), then is asked again."""
    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("delta-*", "conversations.sqlite*"))
    mem = Memory(ModelFolder(folder), args.device, common.memory_config_of(folder, **changes), kinds=AGENT_KINDS)
    start = time.time()
    learning = evaluate(mem, generated(args.learn, args.seed + 500_000), folder.parent / "work", args, learn=True)
    seconds = time.time() - start
    after = evaluate(mem, tasks, folder.parent / "work", args)
    return {"memory": asdict(mem.mcfg), "episodes_learned": len(mem.store.deltas()), "learning_seconds": round(seconds, 1),
            "episodes_fixed": sum(r["fixed"] for rows in learning.values() for r in rows),
            "learning": learning, "after": after}


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--model", required=True, help="a model folder (it is copied: the bench learns in the copy)")
    parser.add_argument("--limit", type=int, help="ask only this many hand-written requests, spread over the file "
                                                  "(default: all)")
    parser.add_argument("--generated", type=int, default=20, help="requests from the corpus generator, for reference")
    parser.add_argument("--learn", type=int, default=45, help="generated requests the model learns from (0: none)")
    parser.add_argument("--memory", type=memory_settings, nargs="+", default=[{}], metavar="SETTINGS",
                        help='learning settings to compare, each from the same base model: "default" or '
                             'changes such as "agent_lr=1e-4,steps=4" (default: the agent\'s own)')
    parser.add_argument("--fix", action="store_true",
                        help="in the learning set, correct each failed task with /fix and its reference command, as "
                             "a user would, so that corrections are learned too")
    parser.add_argument("--max-steps", type=int, default=4, help="turns of the model per task (3 commands and an answer)")
    parser.add_argument("--device")
    parser.add_argument("--seed", type=int, default=20_000_000, help="far from the corpus's folder seeds")
    parser.add_argument("--confirm-all", action="store_true",
                        help="where no sandbox works, say yes to every command instead of stopping: they run "
                             "unsandboxed in the scratch folders (refusals and limits still apply)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/agent.json"))
    args = parser.parse_args()
    console = Console()
    if not console.is_terminal:   # a log file: room for the table's columns
        console = Console(width=160)
    try:
        checkpoint.load_config(ModelFolder(Path(args.model).expanduser()))
    except UserError as e:   # no model there: one line, as the nimllm commands say it
        sys.exit(f"bench/agent.py: {e}")
    progress = checkpoint.read_progress(ModelFolder(Path(args.model).expanduser())) or {}
    tasks = hand_written(args.limit) + generated(args.generated, args.seed)
    with tempfile.TemporaryDirectory(prefix="nimllm-agent-bench-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(Path(args.model).expanduser(), tmp / "model", ignore=shutil.ignore_patterns(   # the base model
            "agent-skills", "chat-skills", "train_state.safetensors", "delta-*", "conversations.sqlite*"))
        sandbox = Sandbox(tmp)
        if not sandbox.active and not args.confirm_all:
            sys.exit(f"the agent bench runs model-written commands, so it needs the sandbox ({sandbox.reason}), "
                     "or --confirm-all on a machine you can lose")
        mem = Memory(ModelFolder(tmp / "model"), args.device, kinds=AGENT_KINDS)
        if args.learn:
            mem.fisher   # estimated now, into the folder that every learner copies
        (tmp / "work").mkdir()
        before = evaluate(mem, tasks, tmp / "work", args)
        info = {"preset": mem.config.get("preset"), "device": str(mem.device), "corpora": mem.config.get("corpora"),
                "params": sum(p.numel() for p in mem.model.parameters())}
        del mem
        result = {"model": str(args.model), **info, "sandboxed": sandbox.active, "trained_steps": progress.get("step"),
                  "args": {k: str(v) for k, v in vars(args).items()},
                  "before": {g: summary(rows) for g, rows in before.items()}, "variants": [],
                  "tasks": {"before": before, "variants": []}}
        common.write_result(args.out, result, indent=1)
        for i, changes in enumerate(args.memory if args.learn else []):   # written after each: a long run keeps what it measured
            v = learn_and_ask_again(tmp / "model", tmp / f"learner-{i}", changes, tasks, args)
            result["variants"].append({**{k: v[k] for k in ("memory", "episodes_learned", "episodes_fixed",
                                                             "learning_seconds")},
                                       "groups": {g: {"learning_set": summary(v["learning"].get(g, [])),
                                                      "after": summary(rows)} for g, rows in v["after"].items()}})
            result["tasks"]["variants"].append({"learning": v["learning"], "after": v["after"]})
            common.write_result(args.out, result, indent=1)
    print_table(result, console)
    console.print(f"wrote {args.out}")


def print_table(result: dict, console: Console) -> None:
    default = asdict(memory_config(result["preset"]))
    table = Table("group", "tasks", "learning settings", "done", "in ≤ 3 commands", "first command right",
                  "answer carries the result", "well formed", "answered without a command", "failed → recovered",
                  title=f"agent requests: {result['model']} ({result['preset']}, {result['device']})")

    def cells(s: dict) -> list[str]:
        pct = lambda x: "" if x is None else f"{x:.1%}"   # noqa: E731
        return [pct(s["success"]), pct(s["within_3"]), pct(s["first_right"]), pct(s["carries"]), pct(s["well_formed"]),
                str(s["answered_without_command"]), f"{s['failed_command']} → {s['recovered']}"]
    for g, s in result["before"].items():
        table.add_row(g, str(s["tasks"]), "before learning", *cells(s))
        for v in result["variants"]:
            changed = ", ".join(f"{k}={x}" for k, x in v["memory"].items() if default[k] != x) or "default"
            table.add_row("", "", f"{changed} ({v['episodes_learned']} learned)", *cells(v["groups"][g]["after"]))
    console.print(table)


if __name__ == "__main__":
    main()
