"""How often does the agent do what was asked? Tasks in fresh scratch folders, each checked against
the folder itself, before and after the model learns from its own successful episodes.

    python3 bench/agent.py --model ~/.nimllm/models/agent-10m --per-group 40 --learn 60 \
        --out bench/results/agent_10m_cpu.json

Three groups of tasks, each a request, a new scratch folder of random names (nimllm/skills.py) and a
check: the expected text in the final answer, or in what was shown (a command's output), or the
files as asked. "trained" asks the kinds and phrasings the agent-skill corpus teaches (about folders
it never saw), "held-out phrasings" the same kinds in words the corpus never uses, "held-out kinds"
tasks of kinds it never has. The agent runs as `nimllm --agent --yes` would (sandboxed, greedy);
then it works through a separate learning set of the same groups, every success is approved and
learned exactly as /good does, and the first three groups are asked again.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from nimllm import checkpoint, skills  # noqa: E402
from nimllm.agent import Agent  # noqa: E402
from nimllm.config import MemoryConfig, ModelFolder  # noqa: E402
from nimllm.memory import Memory  # noqa: E402
from nimllm.sandbox import Sandbox  # noqa: E402

GROUPS = ("trained", "held-out phrasings", "held-out kinds")


def make_tasks(group: str, n: int, seed: int, parent: Path) -> list[tuple[skills.Task, skills.Scratch, str]]:
    """n tasks of a group, spread evenly over the kinds, each with a scratch folder of its own and
    what its own command prints there (the reference; a task whose command fails is drawn again)."""
    trained = [k for k in skills.KINDS.values() if k.trained_kind]
    kinds = [k for k in skills.KINDS.values() if not k.trained_kind] if group == "held-out kinds" else trained
    rng, made = random.Random(seed), []
    while len(made) < n:
        kind = kinds[len(made) % len(kinds)]
        scratch = skills.make_scratch(rng, parent)
        task = skills.make_task(kind, rng, scratch, held_out_phrasing=group != "trained")
        reference = "" if task is None or kind.check == "files" else Sandbox(scratch.root).run(task.command)
        if task and (kind.check == "files" or reference.exit_code == 0 and task.expected(reference.output)):
            made.append((task, scratch, reference and reference.output))
        else:
            shutil.rmtree(scratch.root)
    return made


def said(text: str, expected: str) -> bool:
    """Whether `expected` is in `text` as a whole (the count 2 is not in "12 files")."""
    return re.search(rf"(?<![\w.]){re.escape(expected.lower())}(?![\w])", text.lower()) is not None


def succeeded(task: skills.Task, scratch: skills.Scratch, reference: str, answer: str, outputs: list[str]) -> bool:
    """The check of a task. "files": the folder is as asked. "shown": the expected line (the
    reference's first line, say) was printed by one of the model's commands, or is in its answer.
    "answer": the answer holds the expected text and one of the model's commands printed what the
    reference prints, so a number guessed right from the wrong command does not count."""
    if task.kind.check == "files":
        return task.kind.files(scratch.root, task.values)
    expected = task.expected(reference)
    if task.kind.check == "shown":
        return any(expected.strip() in map(str.strip, out.splitlines()) for out in outputs) or said(answer, expected)
    return said(answer, expected) and reference.strip() in [out.strip() for out in outputs]


def attempt(mem: Memory, task: skills.Task, scratch: skills.Scratch, reference: str, max_steps: int,
            learn: bool, fix: bool = False) -> dict:
    """Run the agent on one task and check the outcome; with `learn`, a success is approved and learned,
    and with `fix` a failure is corrected with the task's own command. The user says yes to everything
    (asked only where there is no sandbox: see --confirm-all)."""
    sandbox = Sandbox(scratch.root)
    transcript = io.StringIO()
    agent = Agent(mem, sandbox, {"temperature": 0.0, "top_k": None, "top_p": None, "max_tokens": 48, "seed": 0},
                  read_line=lambda prompt: "y", out=transcript, yes=True, max_steps=max_steps)
    start = time.time()
    answer = agent.do(task.request) or ""
    messages = mem.store.messages(agent.task)
    calls = [m.content for m in messages if (m.meta or {}).get("tool_call")]
    outputs = [m.meta["output"] for m in messages if m.role == "tool" and "output" in (m.meta or {})]
    success = succeeded(task, scratch, reference, answer, outputs)
    fixed = False
    if learn and success:
        mem.store.set_feedback(messages[-1].id, "good")
    elif learn and fix:   # as a user would: /fix with the command that should have run
        agent.fix(task.command)
        fixed = True
    agent.close_task()
    shutil.rmtree(scratch.root)
    expected = None if task.kind.check == "files" else task.expected(reference)
    return {"kind": task.kind.name, "request": task.request, "reference": task.command, "expected": expected,
            "commands": calls, "answer": answer, "success": success, "ran_command": bool(calls),
            "right_command": task.command in calls, "well_formed": "could not be read" not in transcript.getvalue(),
            "fixed": fixed, "seconds": round(time.time() - start, 2)}


def summary(rows: list[dict]) -> dict:
    n = max(len(rows), 1)
    return {"tasks": len(rows), "success": sum(r["success"] for r in rows) / n,
            "well_formed": sum(r["well_formed"] for r in rows) / n, "ran_command": sum(r["ran_command"] for r in rows) / n,
            "right_command": sum(r["right_command"] for r in rows) / n,
            "by_kind": {k: sum(r["success"] for r in rows if r["kind"] == k) / sum(r["kind"] == k for r in rows)
                        for k in sorted({r["kind"] for r in rows})}}


def evaluate(mem: Memory, args, seed: int, parent: Path, learn: bool = False) -> dict[str, list[dict]]:
    results = {}
    for i, group in enumerate(GROUPS):
        n = args.learn // len(GROUPS) if learn else args.per_group
        results[group] = [attempt(mem, task, scratch, reference, args.max_steps, learn, learn and args.fix)
                          for task, scratch, reference in make_tasks(group, n, seed + 1000 * i, parent)]
    return results


def memory_settings(text: str) -> MemoryConfig:
    """"default", or changes to it: "lr=1e-4,steps=4"."""
    if text == "default":
        return MemoryConfig()
    types = {f.name: f.type for f in fields(MemoryConfig)}
    changes = dict(item.split("=", 1) for item in text.split(","))
    if not set(changes) <= set(types):
        raise argparse.ArgumentTypeError(f"unknown memory settings {sorted(set(changes) - set(types))}")
    parse = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}
    return replace(MemoryConfig(), **{k: parse.get(types[k], str)(v) for k, v in changes.items()})


def learn_and_ask_again(base: Path, folder: Path, mcfg: MemoryConfig, args) -> dict:
    """A fresh copy of the base model (its Fisher too) learns its successes with these settings, then
    the test tasks are asked again."""
    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("delta-*", "conversations.sqlite*"))
    mem = Memory(ModelFolder(folder), args.device, mcfg)
    start = time.time()
    learning = evaluate(mem, args, args.seed + 500_000, folder.parent / "work", learn=True)
    seconds = time.time() - start
    after = evaluate(mem, args, args.seed, folder.parent / "work")
    return {"memory": asdict(mcfg), "episodes_learned": len(mem.store.deltas()), "learning_seconds": round(seconds, 1),
            "episodes_fixed": sum(r["fixed"] for rows in learning.values() for r in rows),
            "learning": learning, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder (it is copied: the bench learns in the copy)")
    parser.add_argument("--per-group", type=int, default=40, help="test tasks per group")
    parser.add_argument("--learn", type=int, default=60, help="tasks of the learning set, over the three groups")
    parser.add_argument("--memory", type=memory_settings, nargs="+", default=[MemoryConfig()], metavar="SETTINGS",
                        help='learning settings to compare, each from the same base model: "default" or '
                             'changes such as "lr=1e-4,steps=4" (default: the agent\'s own)')
    parser.add_argument("--fix", action="store_true",
                        help="in the learning set, correct each failed task with /fix and its own command, as a "
                             "user would, so that corrections are learned too")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--device")
    parser.add_argument("--seed", type=int, default=20_000_000, help="far from the corpus's folder seeds")
    parser.add_argument("--confirm-all", action="store_true",
                        help="where no sandbox works, say yes to every command instead of stopping: they run "
                             "unsandboxed in the scratch folders (refusals and limits still apply)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/agent.json"))
    args = parser.parse_args()
    console = Console()
    progress = checkpoint.read_progress(ModelFolder(Path(args.model).expanduser())) or {}
    with tempfile.TemporaryDirectory(prefix="nimllm-agent-bench-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(Path(args.model).expanduser(), tmp / "model", ignore=shutil.ignore_patterns(   # the base model
            "agent-skills", "train_state.safetensors", "delta-*", "conversations.sqlite*"))
        sandbox = Sandbox(tmp)
        if not sandbox.active and not args.confirm_all:
            sys.exit(f"the agent bench runs model-written commands, so it needs the sandbox ({sandbox.reason}), "
                     "or --confirm-all on a machine you can lose")
        mem = Memory(ModelFolder(tmp / "model"), args.device)
        mem.fisher   # estimated now, into the folder that every learner copies
        (tmp / "work").mkdir()
        before = evaluate(mem, args, args.seed, tmp / "work")
        info = {"preset": mem.config.get("preset"), "device": str(mem.device), "corpora": mem.config.get("corpora"),
                "params": sum(p.numel() for p in mem.model.parameters())}
        del mem
        result = {"model": str(args.model), **info, "sandboxed": sandbox.active, "trained_steps": progress.get("step"),
                  "args": {k: str(v) for k, v in vars(args).items()},
                  "before": {g: summary(before[g]) for g in GROUPS}, "variants": [],
                  "tasks": {"before": before, "variants": []}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for i, mcfg in enumerate(args.memory):   # written after each: a long run keeps what it measured
            v = learn_and_ask_again(tmp / "model", tmp / f"learner-{i}", mcfg, args)
            result["variants"].append({**{k: v[k] for k in ("memory", "episodes_learned", "episodes_fixed",
                                                             "learning_seconds")},
                                       "groups": {g: {"learning_set": summary(v["learning"][g]),
                                                      "after": summary(v["after"][g])} for g in GROUPS}})
            result["tasks"]["variants"].append({"learning": v["learning"], "after": v["after"]})
            args.out.write_text(json.dumps(result, indent=1))
            console.print(f"learned with {mcfg}: success after " +
                          ", ".join(f"{g} {result['variants'][-1]['groups'][g]['after']['success']:.1%}" for g in GROUPS))
    print_table(result, console)
    console.print(f"wrote {args.out}")


def print_table(result: dict, console: Console) -> None:
    default = asdict(MemoryConfig())
    table = Table("group", "learning settings", "learned", "success", "ran the reference command",
                  title=f"agent tasks: {result['model']} ({result['preset']}, {result['device']})")
    for g in GROUPS:
        b = result["before"][g]
        table.add_row(g, "before learning", "", f"{b['success']:.1%}", f"{b['right_command']:.0%}")
        for v in result["variants"]:
            a = v["groups"][g]["after"]
            changed = ", ".join(f"{k}={x}" for k, x in v["memory"].items() if default[k] != x) or "default"
            table.add_row("", changed, str(v["episodes_learned"]), f"{a['success']:.1%}", f"{a['right_command']:.0%}")
    console.print(table)


if __name__ == "__main__":
    main()
