"""Where a fresh chat process spends its time: to the prompt, to the first answer, on the first update.

    python3 bench/chat_startup.py --model DIR [--device cuda] [--runs 3] --out bench/results/chat_startup.json

Two measurements, each in new processes on a copy of the model folder:
- the user's path: `nimllm chat` launched with one statement piped in, timed from launch to the
  prompt, to the reply, and to the exit (the update included), as a person would see it;
- the same steps one by one inside a new process (imports, opening the model, the decoder, the
  first answer, the Fisher and control set, the update), to show where that time goes.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # run from a checkout without installing
STATEMENT = "My neighbour Tomas keeps a boat called the Seagull."

STAGES = r"""
import json, sys, time
t0 = time.perf_counter(); marks = {}
def mark(name):
    global t0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    now = time.perf_counter(); marks[name] = round(now - t0, 3); t0 = now
device = sys.argv[2]
import torch
from nimllm.chat import Chat
from nimllm.config import ModelFolder
from nimllm.memory import Memory
from nimllm.turns import Sampling
mark("import torch and nimllm")
mem = Memory(ModelFolder(__import__("pathlib").Path(sys.argv[1])), device)
mark("open the model (weights, store, memories)")
if device.startswith("cuda"):   # as the chat does on a GPU, while the user types
    mem.warm_up()
    mark("warm up: one dry update (the Fisher and control set read)")
chat = Chat(mem, Sampling(max_tokens=64, temperature=0.7, top_k=50, top_p=0.95, seed=0), open("/dev/null", "w"))
mark("start the conversation")
mem.decoder()
mark("build the decoder")
chat.answer(sys.argv[3])
mark("first answer (64 tokens at most)")
mem.fisher, mem.control
mark("load the Fisher and control set")
mem.store.end_conversation(chat.conversation)
report = mem.learn([chat.conversation], log=lambda *_: None)
mark("the update")
print(json.dumps({"stages": marks, "steps": report.steps if report else None,
                  "update": report.timings if report else None}))
"""


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def user_path(folder: Path, device: str | None) -> dict:
    """One piped `nimllm chat`: seconds from launch to the prompt, to the reply, to the exit."""
    cmd = [sys.executable, "-m", "nimllm.cli", "chat", "--model", str(folder)] + (["--device", device] if device else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), bufsize=0)
    seen, times = "", {}
    proc.stdin.write(STATEMENT + "\n")
    proc.stdin.close()
    while (ch := proc.stdout.read(1)):
        seen += ch
        if "prompt" not in times and seen.endswith("you> "):
            times["prompt"] = time.perf_counter() - start
        if "reply" not in times and seen.count("you> ") >= 2:
            times["reply"] = time.perf_counter() - start
    proc.wait()
    times["exit"] = time.perf_counter() - start
    update = next((line for line in seen.splitlines() if "updated" in line), "")
    return {**{k: round(v, 2) for k, v in times.items()}, "update_line": update.strip(), "returncode": proc.returncode}


def stages(folder: Path, device: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STAGES, str(folder), device, STATEMENT], capture_output=True,
                         text=True, env=env(), timeout=600)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import common   # (bench/common.py)
    parser = common.parser(__doc__)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--device")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/chat_startup.json")
    args = parser.parse_args()
    import torch
    from rich.console import Console
    from rich.table import Table
    from nimllm.runtime import git_commit, pick_device
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model"
        shutil.copytree(args.model, copy)
        runs = [user_path(copy, args.device) for _ in range(args.runs)]
        staged = [stages(copy, device) for _ in range(args.runs)]
    table = Table("fresh `nimllm chat`, one statement piped in", "median s", "runs")
    for key in ("prompt", "reply", "exit"):
        values = [r[key] for r in runs if key in r]
        table.add_row(f"launch -> {key}", f"{statistics.median(values):.2f}", ", ".join(f"{v:.2f}" for v in values))
    for stage in staged[0]["stages"]:
        values = [s["stages"][stage] for s in staged]
        table.add_row(f"  {stage}", f"{statistics.median(values):.2f}", ", ".join(f"{v:.2f}" for v in values))
    for stage in staged[0]["update"] or {}:
        values = [s["update"][stage] for s in staged]
        table.add_row(f"    update: {stage}", f"{statistics.median(values):.2f}", ", ".join(f"{v:.2f}" for v in values))
    Console().print(table)
    result = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu x{torch.get_num_threads()}",
              "torch": torch.__version__, "commit": git_commit(), "model": str(args.model), "user_path": runs,
              "stages": staged}
    common.write_result(args.out, result, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
