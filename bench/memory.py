"""How much does `nimllm --chat` remember? Facts are told to the real command, one chat process per
fact, as a person would; then each is asked in a new chat process, and the reply is scored.

    python3 bench/memory.py --model ~/.nimllm/models/103m --k 10 30 100 --jobs 4 --out bench/results/memory.json

The model folder is copied (the bench learns in the copy; the folder given is never changed). For
every fact of --facts (hand-written, bench/memory_facts.jsonl), one `nimllm chat --model COPY`
process gets the statement on stdin, answers it as it will, and at the end of input learns the
conversation and exits, exactly as a user's chat does; the bench never writes the model's turns.
At each K of --k (facts taught one after another) every fact taught so far is asked, each question
in a new chat process with the chat's own sampling, in a snapshot of the copy (so that whatever the
asking does cannot reach the teaching); it scores when the answer appears in the reply. Scored: the
question as taught, a paraphrase (--paraphrase) and, in a copy with the memories added into
model.safetensors and the conversation store removed, the question as taught again (--weights-only:
the memory is in the weights, not in the store). With --agent, bench/agent.py also scores the base
model and a copy that learned 10 unrelated chats. --scripted adds the old in-process measurement,
an upper bound: there the bench writes the model's turns (the fact, a question, its answer).
--in-process SETTINGS... learns the same conversations (the statement alone) in one process, once per
memory setting, and asks the live model greedily, sampled three times and in paraphrase: an upper
bound, quick enough to compare designs (with --no-chats, only that).
"""
from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402  (bench/common.py)
from nimllm import checkpoint  # noqa: E402
from nimllm.config import MemoryConfig, ModelFolder, UserError  # noqa: E402
from nimllm.deltas import load_remembered  # noqa: E402
from nimllm.memory import AGENT_KINDS  # noqa: E402
from nimllm.store import Store  # noqa: E402
from bench.agent import memory_settings  # noqa: E402

FACTS = REPO / "bench" / "memory_facts.jsonl"
UNRELATED = REPO / "bench" / "unrelated_chats.txt"
PROMPT, REPLY = "you> ", "nimllm> "        # what the chat prints (nimllm/chat.py)
UPDATED = re.compile(r"updated ([\d,]+) weights \([^)]*\) in ([\d.]+) s")
NOT_KEPT = re.compile(r"learned in ([\d.]+) s \([^)]*\) but not kept")   # refused by the control check
CONTROL = re.compile(r"control answers kept:\s*(\d+)\s*/\s*(\d+)")
SCRIPTED = "scripted upper bound (the bench writes the model's turns)"
NOT_COPIED = ("conversations.sqlite*", "delta-*", "train_state.safetensors")   # a fresh model: no memories


def load_facts(path: Path) -> list[dict]:
    facts = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for i, f in enumerate(facts, 1):
        missing = {"statement", "question", "paraphrase", "answer"} - set(f)
        if missing:
            sys.exit(f"{path}, fact {i}: no {', '.join(sorted(missing))}")
    return facts


# ---- one chat process, driven through its pipes ------------------------------------------------

class _Reader(threading.Thread):
    """Reads a pipe as it is written, so the bench can wait for a prompt."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.text, self.closed = pipe, "", False
        self.cond = threading.Condition()

    def run(self):
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        fd = self.pipe.fileno()
        while chunk := os.read(fd, 65536):
            with self.cond:
                self.text += decoder.decode(chunk)
                self.cond.notify_all()
        with self.cond:
            self.text += decoder.decode(b"", final=True)
            self.closed = True
            self.cond.notify_all()

    def wait_for(self, needle: str, start: int, deadline: float) -> int | None:
        """Where `needle` first appears from `start` on; None once the pipe closed or time is up."""
        with self.cond:
            while (at := self.text.find(needle, start)) < 0:
                left = deadline - time.perf_counter()
                if self.closed or left <= 0:
                    return None
                self.cond.wait(left)
            return at


THREADS: int | None = None   # --threads: every process's CPU threads


def cli_env(threads: int | None = None) -> dict:
    """A `nimllm` subprocess's environment: this checkout first, output unbuffered, and the CPU threads
    of --threads (or `threads`, the machine's share of one of --jobs processes, unless already set)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    if THREADS:
        env["OMP_NUM_THREADS"] = str(THREADS)
    elif threads and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def reply_of(transcript: str) -> str | None:
    """The model's answer: the text after `nimllm> ` up to the next prompt, or the end."""
    at = transcript.find(REPLY)
    if at < 0:
        return None
    rest = transcript[at + len(REPLY):]
    end = rest.find("\n" + PROMPT)
    return rest[:end] if end >= 0 else rest.rstrip("\n")


def chat(folder: Path, message: str, device: str | None, timeout: float, threads: int | None = None,
         input_ended: threading.Event | None = None) -> dict:
    """One `nimllm chat --model FOLDER` process: wait for its prompt, say `message`, wait for the reply,
    then end the input (as Ctrl-D does; `input_ended` is set then, or when the chat failed before) and
    wait for it to learn and exit. Timings in seconds: launch to the first prompt, the message to the
    next prompt (the reply), the end of input to the exit."""
    cmd = [sys.executable, "-m", "nimllm.cli", "chat", "--model", str(folder),
           *(["--device", device] if device else [])]
    start, launched_at = time.perf_counter(), time.time()
    deadline = start + timeout
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(threads), cwd=REPO)
    out, err = _Reader(proc.stdout), _Reader(proc.stderr)
    out.start(), err.start()
    row = {"message": message, "time_to_prompt_s": None, "reply_s": None, "exit_s": None, "error": None}
    try:
        prompt = out.wait_for(PROMPT, 0, deadline)
        if prompt is None:
            raise RuntimeError("no prompt")
        row["time_to_prompt_s"] = round(time.perf_counter() - start, 3)
        sent = time.perf_counter()
        proc.stdin.write((message + "\n").encode())
        proc.stdin.flush()
        if out.wait_for("\n" + PROMPT, prompt + len(PROMPT), deadline) is None:
            raise RuntimeError("no prompt after the reply")
        row["reply_s"] = round(time.perf_counter() - sent, 3)
        eof = time.perf_counter()
        proc.stdin.close()
        if input_ended:
            input_ended.set()
        proc.wait(max(deadline - time.perf_counter(), 0.01))
        row["exit_s"] = round(time.perf_counter() - eof, 3)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        row["error"] = "timed out" if time.perf_counter() >= deadline else str(e) or type(e).__name__
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if input_ended:
        input_ended.set()
    out.join(5), err.join(5)
    row["returncode"] = proc.returncode
    if proc.returncode and not row["error"]:
        row["error"] = f"exit code {proc.returncode}"
    row["launched_at"], row["exited_at"] = round(launched_at, 3), round(time.time(), 3)   # wall clock: what overlapped
    row["reply"] = reply_of(out.text)
    updated, refused = UPDATED.search(out.text), NOT_KEPT.search(out.text)
    row["learned"] = updated is not None or refused is not None
    row["update_reported_s"] = float(updated.group(2)) if updated else float(refused.group(1)) if refused else None
    row["weights_changed"] = int(updated.group(1).replace(",", "")) if updated else 0 if refused else None
    row["transcript"] = out.text
    if row["error"] or err.text.strip():
        row["stderr"] = err.text[-4000:]
    return row


def recalled(reply: str | None, answer: str) -> bool:
    return reply is not None and answer.lower() in reply.lower()


# ---- model folders -------------------------------------------------------------------------------

def copy_model(source: Path, dest: Path, ignore=NOT_COPIED) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*ignore))
    return dest


def weights_only(folder: Path, dest: Path, step: int, kinds: tuple[str, ...] | None = None) -> Path:
    """A copy whose model.safetensors holds the memories (base weights plus every delta kept; with kinds,
    those a Memory of these kinds carries) and which has no conversation store and no memory/ folder:
    what it recalls is in the weights alone."""
    copy_model(folder, dest, ignore=())
    model, _ = load_remembered(ModelFolder(folder), kinds=kinds)
    checkpoint.save_weights(ModelFolder(dest), model, step)
    for path in dest.glob("conversations.sqlite*"):
        path.unlink()
    shutil.rmtree(dest / "memory", ignore_errors=True)
    return dest


def memories(folder: Path) -> int:
    """Memories recorded in a folder's store, forgotten ones too: what `nimllm memory list` lists."""
    store = ModelFolder(folder).store
    if not store.exists():
        return 0
    with Store(store) as s:
        return len(s.deltas(include_forgotten=True))


def conversations(folder: Path) -> int:
    store = ModelFolder(folder).store
    if not store.exists():
        return 0
    with Store(store) as s:
        return len(s.conversations())


def memory_stats(folder: Path) -> dict:
    """`nimllm memory stats` on the folder: its text, and `control answers kept: A/B` if it says so."""
    out = subprocess.run([sys.executable, "-m", "nimllm.cli", "memory", "stats", "--model", str(folder)],
                         capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=600)
    found = CONTROL.search(out.stdout)
    return {"control_kept": [int(found.group(1)), int(found.group(2))] if found else None,
            "text": out.stdout.strip() if out.returncode == 0 else (out.stdout + out.stderr).strip()[-2000:]}


# ---- the bench on the user's path ----------------------------------------------------------------

def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def run_chats(source: Path, facts: list[dict], ks: list[int], args, work: Path, console: Console,
              save=lambda partial: None) -> dict:
    teach = copy_model(source, work / "teach")
    step = (checkpoint.read_progress(ModelFolder(source)) or {}).get("step", 0)
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    per_fact = [{"index": i, **f, "teach": None, "asks": []} for i, f in enumerate(facts)]
    rows, warnings, taught = [], [], 0
    for k in ks:
        teach_rows = teach_facts(teach, facts, range(taught, k), per_fact, args, console)
        taught = k
        learned = memories(teach)
        asking = copy_model(teach, work / f"ask-k{k}", ignore=())   # asking cannot reach the teaching
        baked = weights_only(teach, work / f"weights-only-k{k}", step) if args.weights_only else None
        jobs = [(i, mode, asking, "question" if mode == "as taught" else "paraphrase") for i in range(k)
                for mode in ("as taught", "paraphrase") if mode == "as taught" or args.paraphrase]
        jobs += [(i, "weights only", baked, "question") for i in range(k)] if baked else []

        def ask(job):
            i, mode, folder, key = job
            r = chat(folder, facts[i][key], args.device, args.timeout, threads)
            return {"k": k, "mode": mode, "recalled": recalled(r["reply"], facts[i]["answer"]), **r}

        with ThreadPoolExecutor(args.jobs) as pool:
            asks = list(pool.map(ask, jobs))
        for (i, *_), a in zip(jobs, asks):
            del a["message"]
            per_fact[i]["asks"].append(a)
        for folder, before in ((asking, learned), (baked, 0)):
            if folder and memories(folder) > before:
                warnings.append(f"K={k}: asking in {folder.name} added {memories(folder) - before} memories "
                                f"(`nimllm memory list` grew): the chat learned from the questions")
        failed = [a for a in asks if a["error"]] + [t for t in teach_rows if t["error"]]
        if failed:
            warnings.append(f"K={k}: {len(failed)} chat processes failed ({failed[0]['error']})")
        stats = memory_stats(teach)
        score = lambda mode: (sum(a["recalled"] for a in asks if a["mode"] == mode), k) \
            if any(a["mode"] == mode for a in asks) else None   # noqa: E731
        rows.append({"k": k, "recall": score("as taught"), "paraphrase": score("paraphrase"),
                     "weights_only": score("weights only"), "control_kept": stats["control_kept"],
                     "memories": learned, "conversations": conversations(teach),
                     "time_to_prompt_s_median": median(a["time_to_prompt_s"] for a in asks
                                                       if a["mode"] != "weights only"),
                     "time_to_prompt_s_median_teach": median(t["time_to_prompt_s"] for t in teach_rows),
                     "update_s_median": median(t["exit_s"] for t in teach_rows),
                     "update_reported_s_median": median(t["update_reported_s"] for t in teach_rows),
                     "reply_s_median": median(a["reply_s"] for a in asks),
                     "teach_processes": len(teach_rows),
                     "taught_and_kept": sum(bool(t["weights_changed"]) for t in teach_rows),
                     "ask_processes": len(asks),
                     "processes": len(teach_rows) + len(asks), "memory_stats": stats["text"]})
        console.print(summary_line(rows[-1]))
        save({"rows": rows, "facts": per_fact[:k], "warnings": warnings,   # a run cut off later keeps this K
              "partial": k < ks[-1]})
        if not args.work:   # a temporary work folder: the snapshots are not needed any more
            shutil.rmtree(asking)
            if baked:
                shutil.rmtree(baked)
    return {"rows": rows, "facts": per_fact[:max(ks)], "warnings": warnings, "teach_folder": str(teach)}


def teach_facts(teach: Path, facts: list[dict], indices: range, per_fact: list[dict], args, console: Console):
    """A teaching chat per fact, in order, each learning on the last one's weights. With --overlap the
    next starts once the last one's input has ended, so its start-up and reply run while the last one
    learns, as with two chats a person has open at once: their updates take turns under the store's
    lock, the later catching up on the earlier. Never more than two at once."""
    def teach_one(i: int, input_ended: threading.Event):
        t = chat(teach, facts[i]["statement"], args.device, args.timeout, input_ended=input_ended)
        per_fact[i]["teach"] = t
        console.print(f"taught {i + 1}/{len(facts)}: to prompt {t['time_to_prompt_s']} s, end of input to exit "
                      f"{t['exit_s']} s" + (f", {t['error']}" if t["error"] else ""))

    learning = None   # the chat before, still learning
    for i in indices:
        input_ended = threading.Event()
        thread = threading.Thread(target=teach_one, args=(i, input_ended))
        thread.start()
        input_ended.wait() if args.overlap else thread.join()
        if learning:
            learning.join()
        learning = thread
        first = per_fact[0]["teach"]
        if first and first["error"] and i < 2:   # the model cannot chat here: asking would only repeat it
            sys.exit(f"the first chat failed ({first['error']}):\n{first['transcript']}\n{first.get('stderr', '')}")
    if learning:
        learning.join()
    return [per_fact[i]["teach"] for i in indices]


def summary_line(r: dict) -> str:
    parts = {"recall": r.get("recall"), "paraphrase": r.get("paraphrase"), "weights only": r.get("weights_only"),
             "control kept": r.get("control_kept")}
    return f"K={r['k']}: " + ", ".join(f"{name} {s[0]}/{s[1]}" for name, s in parts.items() if s is not None)


# ---- the agent before and after unrelated chats ----------------------------------------------------

def agent_scores(source: Path, args, work: Path, console: Console) -> dict:
    """bench/agent.py on the base model, then on a copy that learned the unrelated chats of --unrelated
    (bench/unrelated_chats.txt; each its own chat process). agent.py copies its model leaving the
    conversation store and the deltas behind, so it is given that copy with the memories `nimllm agent`
    carries (AGENT_KINDS) in the weights."""
    base = copy_model(source, work / "agent-base")
    learner = copy_model(source, work / "unrelated")
    step = (checkpoint.read_progress(ModelFolder(source)) or {}).get("step", 0)
    lines = [line for line in args.unrelated.read_text().splitlines() if line.strip()]
    chats = [chat(learner, line, args.device, args.timeout) for line in lines]
    console.print(f"learned {sum(c['learned'] for c in chats)}/{len(chats)} unrelated chats")
    baked = weights_only(learner, work / "unrelated-weights", step, kinds=AGENT_KINDS)
    result = {"unrelated_chats": [{k: c[k] for k in ("message", "reply", "learned", "time_to_prompt_s", "exit_s",
                                                       "error")} for c in chats],
              "limit": args.agent_limit}
    for name, folder in (("before", base), ("after_unrelated_chats", baked)):
        out = work / f"agent-{name}.json"
        cmd = [sys.executable, str(REPO / "bench" / "agent.py"), "--model", str(folder), "--generated", "0",
               "--learn", "0", "--out", str(out), *(["--limit", str(args.agent_limit)] if args.agent_limit else []),
               *(["--device", args.device] if args.device else [])]
        done = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=REPO)
        if done.returncode or not out.exists():
            result[name] = {"error": (done.stdout + done.stderr).strip()[-2000:]}
            console.print(f"agent bench ({name}) failed: {result[name]['error'].splitlines()[-1:]}")
            continue
        scored = json.loads(out.read_text())   # agent.py's own score before it learns anything
        before = scored["before"]
        tasks = sum(g["tasks"] for g in before.values())
        result[name] = {"success": sum(g["success"] * g["tasks"] for g in before.values()) / max(tasks, 1),
                        "tasks": tasks, "groups": before,
                        "done": [t["request"] for group in scored["tasks"]["before"].values() for t in group
                                 if t["success"]],
                        "runs": {t["request"]: {k: t[k] for k in ("commands", "answer", "success")}
                                 for group in scored["tasks"]["before"].values() for t in group}}
        console.print(f"agent ({name.replace('_', ' ')}): {result[name]['success']:.1%} of {tasks} tasks")
    if all("done" in result[name] for name in ("before", "after_unrelated_chats")):
        done_before, done_after = (set(result[name]["done"]) for name in ("before", "after_unrelated_chats"))
        result["lost"], result["gained"] = sorted(done_before - done_after), sorted(done_after - done_before)
        result["changed"] = {request: {name: result[name]["runs"][request] for name in ("before", "after_unrelated_chats")}
                             for request in result["lost"] + result["gained"]}   # what the chats changed, to read
        for name in ("before", "after_unrelated_chats"):
            del result[name]["runs"]
        console.print(f"agent tasks lost to the chats: {len(result['lost'])}, gained: {len(result['gained'])}")
    return result


# ---- the scripted upper bound (the previous design: one process, the bench writes the turns) -------

def scripted(source: Path, facts: list[dict], ks: list[int], variants: list[str], steps: int, device: str | None,
             console: Console) -> list[dict]:
    """For each variant, facts are taught in-process into a copy, one stored conversation each in which
    the bench writes the model's turns (the fact, a question, its answer), then asked greedily of a
    freshly loaded Memory. An upper bound: the model never has to answer well to be taught well."""
    from nimllm.data import TokenShards
    from nimllm.generate import generate
    from nimllm.memory import Memory
    from nimllm.evaluate import evaluate
    from nimllm.runtime import Runtime

    def teach(mem: Memory, fact: dict) -> float:
        cid = mem.store.start_conversation()
        for role, text in (("user", fact["statement"]), ("assistant", f"Noted: {fact['statement']}"),
                           ("user", fact["question"]), ("assistant", fact["statement"])):
            mem.store.add_message(cid, role, text)
        mem.store.end_conversation(cid)
        return mem.learn([cid], log=lambda *_: None).seconds

    def recalls(mem: Memory, fact: dict, key: str) -> bool:
        ids, _ = mem.tokenizer.render_conversation([("user", fact[key])], add_generation_prompt=True)
        reply = mem.tokenizer.decode(list(generate(mem.model, ids, 24, temperature=0,
                                                   stop_ids=[mem.tokenizer.special("<|end|>")])))
        return recalled(reply, fact["answer"])

    base = common.memory_config_of(source, steps=steps)
    configs = {"full": replace(base, mask_fraction=1.0, ewc_lambda=0.0), "mask": replace(base, ewc_lambda=0.0),
               "ewc": replace(base, mask_fraction=1.0), "mask+ewc": base}
    rows = []
    for name in variants:
        mcfg = configs[name]
        with tempfile.TemporaryDirectory() as tmp:
            folder = ModelFolder(copy_model(source, Path(tmp) / "model"))
            mem = Memory(folder, device, mcfg)
            val = TokenShards(folder.root / mem.config["corpora"][-1]["data"], "val")
            rt = Runtime(mem.device)
            bpb_before = evaluate(mem.model, val, rt, 8, 65536)["bpb"]
            seconds = []
            for i, fact in enumerate(facts[:max(ks)], 1):
                seconds.append(teach(mem, fact))
                if i in ks:
                    fresh = Memory(folder, device, mcfg)   # what a new process would load
                    taught = facts[:i]
                    rows.append({"mode": SCRIPTED, "variant": name, "k": i, "memory": asdict(mcfg),
                                 "recall": [sum(recalls(fresh, f, "question") for f in taught), i],
                                 "paraphrase": [sum(recalls(fresh, f, "paraphrase") for f in taught), i],
                                 "base_val_bpb": evaluate(fresh.model, val, rt, 8, 65536)["bpb"],
                                 "base_val_bpb_before": bpb_before, "update_s_median": median(seconds)})
                    console.print(f"{SCRIPTED}, {name}: " + summary_line(rows[-1]))
    return rows


# ---- in one process: the same learning, without the processes (an upper bound) ------------------

IN_PROCESS = "one process (upper bound: no process starts, questions asked of the live model)"


def in_process(source: Path, facts: list[dict], ks: list[int], variants: list[dict], device: str | None,
               console: Console) -> list[dict]:
    """For each variant (changes to the model's memory settings), facts are stored as a chat stores them
    (the statement, then a reply the bench never learns from) and learned with `Memory.learn`, one
    conversation each; at each K every fact is asked of the live model greedily, sampled three times
    with the chat's defaults, and in paraphrase. Quick enough to compare designs; the chat processes remain the measurement."""
    from nimllm.generate import generate
    from nimllm.memory import Memory
    rows = []
    for changes in variants:
        mcfg = common.memory_config_of(source, **changes)
        with tempfile.TemporaryDirectory() as tmp:
            mem = Memory(ModelFolder(copy_model(source, Path(tmp) / "model")), device, mcfg)
            stop = [mem.tokenizer.special("<|end|>")]

            def replies(text: str) -> list[str]:
                ids, _ = mem.tokenizer.render_conversation([("user", text)], add_generation_prompt=True)
                return [mem.tokenizer.decode(list(generate(mem.model, ids, 60, temperature=t, top_k=50, top_p=0.95,
                                                           seed=seed, stop_ids=stop, decoder=mem.decoder())))
                        for t, seed in ((0, None), (0.7, 0), (0.7, 1), (0.7, 2))]

            reports = []
            for i, fact in enumerate(facts[:max(ks)], 1):
                cid = mem.store.start_conversation()
                mem.store.add_message(cid, "user", fact["statement"])
                mem.store.add_message(cid, "assistant", "ok")
                mem.store.end_conversation(cid)
                reports.append(mem.learn([cid], log=lambda *_: None))
                if i not in ks:
                    continue
                asked = [(replies(f["question"]), replies(f["paraphrase"])[0], f["answer"]) for f in facts[:i]]
                kept = mem.control_kept()
                rows.append({"mode": IN_PROCESS, "memory": asdict(mcfg), "changes": changes, "k": i,
                             "recall": [sum(recalled(q[0], a) for q, _, a in asked), i],
                             "sampled": [sum(recalled(r, a) for q, _, a in asked for r in q[1:]), 3 * i],
                             "paraphrase": [sum(recalled(p, a) for _, p, a in asked), i],
                             "recalled_by_fact": [recalled(q[0], a) for q, _, a in asked],
                             "control_kept": [sum(kept), len(kept)],
                             "update_s_median": median([r.seconds for r in reports]),
                             "steps": [r.steps for r in reports], "scales": [r.scale for r in reports]})
                r = rows[-1]
                console.print(f"{IN_PROCESS}, {changed_settings(changes)}: K={i} recall {r['recall'][0]}/{i}, sampled "
                              f"{r['sampled'][0]}/{3 * i}, paraphrase {r['paraphrase'][0]}/{i}, control "
                              f"{sum(kept)}/{len(kept)}, update median {r['update_s_median']:.2f} s")
    return rows


def changed_settings(changes: dict) -> str:
    """What an --in-process row changed of the model's memory settings."""
    return ",".join(f"{k}={v}" for k, v in changes.items()) or "default"


# ---- output --------------------------------------------------------------------------------------

def results_table(rows: list[dict], scripted_rows: list[dict], in_process_rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("", "K", "recall", "paraphrase", "weights only", "control kept", "to prompt s", "update s",
                "processes"):
        table.add_column(col, justify="left" if not col else "right")
    show = lambda s: "" if s is None else f"{s[0]}/{s[1]}"   # noqa: E731
    num = lambda v: "" if v is None else f"{v:.2f}"   # noqa: E731
    for r in rows:
        table.add_row("chat", str(r["k"]), show(r["recall"]), show(r["paraphrase"]), show(r["weights_only"]),
                      show(r["control_kept"]), num(r["time_to_prompt_s_median"]), num(r["update_s_median"]),
                      f"{r['teach_processes']}+{r['ask_processes']}")
    for r in in_process_rows:
        table.add_row(f"one process** {changed_settings(r['changes'])}", str(r["k"]),
                      f"{show(r['recall'])} (sampled {show(r['sampled'])})", show(r["paraphrase"]), "",
                      show(r["control_kept"]), "", num(r["update_s_median"]), "1")
    for r in scripted_rows:
        table.add_row(f"scripted* {r['variant']}", str(r["k"]), show(r["recall"]), show(r["paraphrase"]), "", "",
                      "", num(r["update_s_median"]), "1")
    table.caption = ("chat: each fact told to, and each question asked of, its own `nimllm chat` process; recall: "
                     "the answer is in the reply (as taught; paraphrase; as taught of the memories in the weights "
                     "alone); to prompt: launch to first prompt of the asking processes (median); update: end of "
                     "input to exit of the teaching processes (median); processes: teaching + asking since the "
                     "last K" + (f". *{SCRIPTED}" if scripted_rows else "")
                     + (f". **{IN_PROCESS}; recall greedy, sampled 3 times as the chat samples" if in_process_rows else ""))
    return table


def git_commit() -> dict:
    def git(*a):
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def settings(source: Path, facts_path: Path, n_facts: int, args) -> dict:
    from nimllm.runtime import pick_device
    cfg = checkpoint.load_config(ModelFolder(source))
    return {"model": str(source), "preset": cfg.get("preset"), "model_config": asdict(cfg["model"]),
            "corpora": cfg["corpora"],
            "trained": checkpoint.read_progress(ModelFolder(source)),
            "memory_config": asdict(common.memory_config_of(source)),
            "git": git_commit(), "torch": torch.__version__, "python": sys.version.split()[0],
            "device": pick_device(args.device), "device_arg": args.device, "cpus": os.cpu_count(),
            "ks": args.k, "facts_file": str(facts_path), "facts": n_facts, "jobs": args.jobs, "overlap": args.overlap,
            "threads": args.threads,
            "paraphrase": args.paraphrase, "weights_only": args.weights_only, "timeout_s": args.timeout,
            "sampling": "the chat's defaults (no sampling options passed)"}


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


def main():
    ap = common.parser(__doc__)
    ap.add_argument("--model", required=True, help="a trained model folder (it is copied, never changed)")
    ap.add_argument("--k", type=int, nargs="+", default=[10, 30, 100], help="facts taught when asking (cumulative)")
    ap.add_argument("--facts", type=Path, default=FACTS, help="JSON lines: statement, question, paraphrase, answer")
    ap.add_argument("--device", help="passed to every chat process (default: the chat's own choice)")
    ap.add_argument("--paraphrase", action=argparse.BooleanOptionalAction, default=True,
                    help="also ask each fact in other words (default on)")
    ap.add_argument("--weights-only", action=argparse.BooleanOptionalAction, default=True,
                    help="also ask in a copy with the memories in model.safetensors and no store (default on)")
    ap.add_argument("--jobs", type=int, default=1, help="asking processes run side by side (teaching stays one "
                                                        "at a time); each gets the CPU's threads / jobs")
    ap.add_argument("--overlap", action="store_true",
                    help="start each teaching chat once the one before has ended its input, so its start-up "
                         "and reply run while the one before learns (their updates still take turns): less time "
                         "for a large K; update times are then shared with the other chat")
    ap.add_argument("--threads", type=int, help="CPU threads of every process (OMP_NUM_THREADS; default: torch's "
                                                "own, or the CPUs / --jobs for the asking processes). On a CPU "
                                                "shared with other work, 1 avoids threads waiting on each other")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one chat process may take")
    ap.add_argument("--agent", action="store_true", help="also bench/agent.py on the base model and on a copy that "
                                                         "learned bench/unrelated_chats.txt (needs bubblewrap)")
    ap.add_argument("--agent-limit", type=int, help="hand-written agent requests asked (default: all)")
    ap.add_argument("--unrelated", type=Path, default=UNRELATED, help="--agent: the chats learned, one a line")
    ap.add_argument("--in-process", type=memory_settings, nargs="+", metavar="SETTINGS",
                    help=f"also the {IN_PROCESS}, once per memory setting: 'default' or changes such as "
                         "'keep_answers=False,learned_loss=0.3'")
    ap.add_argument("--chats", action=argparse.BooleanOptionalAction, default=True,
                    help="the chat processes (default on; --no-chats with --in-process compares designs quickly)")
    ap.add_argument("--scripted", action="store_true", help=f"also the {SCRIPTED}, in one process")
    ap.add_argument("--variants", nargs="+", default=["mask+ewc"], choices=["full", "mask", "ewc", "mask+ewc"],
                    help="--scripted: memory settings compared (full fine-tuning, mask only, EWC only, both)")
    ap.add_argument("--steps", type=int, default=MemoryConfig.steps, help="--scripted: Adam steps per update")
    ap.add_argument("--work", type=Path, help="make the copies here and keep them (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/memory.json"))
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    if args.threads:
        torch.set_num_threads(args.threads)

    source = Path(args.model).expanduser().resolve()
    try:
        checkpoint.load_config(ModelFolder(source))
    except UserError as e:   # no model there: one line, as the nimllm commands say it
        sys.exit(f"bench/memory.py: {e}")
    facts = load_facts(args.facts)
    ks = sorted(set(args.k))
    if ks[-1] > len(facts):
        sys.exit(f"--k {ks[-1]} needs {ks[-1]} facts; {args.facts} has {len(facts)}")
    console = Console()
    if not console.is_terminal:   # a log file: room for the table's columns
        console = Console(width=120)
    start = time.time()
    result = {"bench": "memory on the user's path: `nimllm chat` processes", "settings": settings(
        source, args.facts, len(facts), args)}
    with tempfile.TemporaryDirectory(prefix="nimllm-memory-bench-") as tmp:
        work = args.work.resolve() if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result.update(run_chats(source, facts, ks, args, work, console, lambda partial: write(args.out, {
            **result, **partial})) if args.chats else
                      {"rows": [], "facts": [], "warnings": []})
        result["agent"] = agent_scores(source, args, work, console) if args.agent else None
    scripted_rows = (scripted(source, facts, ks, args.variants, args.steps, args.device, console)
                     if args.scripted else [])
    result["scripted"] = {"label": SCRIPTED, "rows": scripted_rows} if args.scripted else None
    in_process_rows = in_process(source, facts, ks, args.in_process, args.device, console) if args.in_process else []
    result["in_process"] = {"label": IN_PROCESS, "rows": in_process_rows} if args.in_process else None
    result["seconds"] = round(time.time() - start, 1)

    console.print(results_table(result["rows"], scripted_rows, in_process_rows, f"facts recalled by {source.name} through `nimllm "
                                                               f"chat` ({result['settings']['device']})"))
    if result["agent"]:
        agent = result["agent"]
        show = lambda r: f"{r['success']:.1%} of {r['tasks']} tasks" if "success" in r else "failed"   # noqa: E731
        console.print(f"agent: {show(agent['before'])} before; {show(agent['after_unrelated_chats'])} after "
                      f"{len(agent['unrelated_chats'])} unrelated chats "
                      f"({sum(c['learned'] for c in agent['unrelated_chats'])} of them learned)")
    for w in result["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    write(args.out, result)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
