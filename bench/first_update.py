"""The first updates of a fresh process, with and without the chat's dry warm-up.

    python3 bench/first_update.py --model DIR [--device cuda] [--updates 4] --out bench/results/first_update.json

For each variant a new process opens a copy of the model folder (`Memory`, as a chat does), warms up
or not, then learns one conversation per fact of bench/memory_facts.jsonl (the statement alone), one
after another, timing each update by stage. "none": no warm-up; "dry": `Memory.warm_up()`, the dry
update that a chat on a GPU runs while its user types. The first update of a fresh process is what a
user waits for at the end of a chat, and the first use of kernels and memory makes it the slowest.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # run from a checkout without installing
import common  # noqa: E402  (bench/common.py)
from nimllm import checkpoint  # noqa: E402
from nimllm.config import ModelFolder, UserError  # noqa: E402
VARIANTS = ("none", "dry")

ONE_PROCESS = r"""
import json, sys, time
folder, variant, device, updates = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import torch
from nimllm.config import ModelFolder
from pathlib import Path
from nimllm.memory import Memory
sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
t = time.perf_counter()
mem = Memory(ModelFolder(Path(folder)), device)
if variant == "dry":
    mem.warm_up()
sync()
row = {"variant": variant, "warm_up_s": round(time.perf_counter() - t, 2) if variant == "dry" else None, "updates": []}
facts = [json.loads(line) for line in open("bench/memory_facts.jsonl")][:updates]
for fact in facts:
    cid = mem.store.start_conversation()
    mem.store.add_message(cid, "user", fact["statement"])
    mem.store.end_conversation(cid)
    t = time.perf_counter()
    report = mem.learn([cid], log=lambda *_: None)
    sync()
    row["updates"].append({"total_s": round(time.perf_counter() - t, 3), "n_steps": report.steps,
                           "learned": report.learned, "stages_s": report.timings})
print(json.dumps(row))
"""


def run_variant(model: Path, variant: str, device: str, updates: int, work: Path) -> dict:
    copy = work / variant
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("agent-skills", "chat-skills",
                                                                "train_state.safetensors"))
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS, str(copy), variant, device, str(updates)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        sys.exit(f"bench/first_update.py: the {variant} process failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--updates", type=int, default=4, help="conversations learned one after another")
    parser.add_argument("--out", type=Path, default=Path("bench/results/first_update.json"))
    args = parser.parse_args()
    try:
        checkpoint.load_config(ModelFolder(args.model))
    except UserError as e:   # no model there: one line, as the nimllm commands say it
        sys.exit(f"bench/first_update.py: {e}")
    with tempfile.TemporaryDirectory(prefix="nimllm-first-update-") as work:
        rows = [run_variant(args.model, v, args.device, args.updates, Path(work)) for v in VARIANTS]
    table = Table(title=f"updates of a fresh process: {args.model.name} ({args.device})")
    for column in ("warm-up", "1st update", "later updates", "steps"):
        table.add_column(column)
    for row in rows:
        later = [u["total_s"] for u in row["updates"][1:]]
        table.add_row(f"{row['variant']}: {row['warm_up_s'] or 0:.2f} s", f"{row['updates'][0]['total_s']:.2f} s",
                      f"{min(later):.2f}–{max(later):.2f} s" if later else "",
                      ", ".join(str(u["n_steps"]) for u in row["updates"]))
    Console(width=120).print(table)
    common.write_result(args.out, {"model": str(args.model), "device": args.device, "rows": rows}, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
