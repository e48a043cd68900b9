"""Where a process runs: the device, and its place among torchrun's processes (rank, world size),
with the autocast and barrier that depend on them; how long work takes there (for a --time budget);
and what a run records about its software.

Training, scoring, memory and the benchmarks all pick their device here, so that none of them has
to import the trainer to know where to run.
"""
from __future__ import annotations

import gc
import os
import platform
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

import nimllm


# ---- where we run ------------------------------------------------------------------------------

@dataclass
class Runtime:
    device: str          # "cuda", "cuda:1", "mps" or "cpu"
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def autocast(self, cache: bool = True):
        """bf16 matmuls on CUDA with float32 master weights; other devices stay in float32.
        Without the cache, the bf16 copies of the weights are made per use instead of kept."""
        if self.device_type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
        return nullcontext()

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()


def pick_device(requested: str | None = None) -> str:
    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def setup_runtime(requested_device: str | None = None) -> Runtime:
    """One process, or one of torchrun's (RANK, LOCAL_RANK and WORLD_SIZE set): NCCL on GPUs, gloo on CPUs."""
    device = pick_device(requested_device)
    if "RANK" not in os.environ:
        return Runtime(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Runtime(device, rank, world)


# ---- how long things take -----------------------------------------------------------------------

def timed(run, device: str | torch.device) -> float:
    """Seconds of a second call of `run` (the first warms up), the device's queued work included."""
    device = torch.device(device)
    for _ in range(2):
        begun = time.time()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.time() - begun


def exit_seconds() -> float:
    """About how long Python will take to end this process, for a --time budget that runs to it: it
    finalizes what a full collection walks, in about five times the collection's time (measured: torch
    alone takes 1.3 s to end on a busy 2-core machine, after a 0.25 s collection; a trained tiny model's
    process 1.8 s after 0.34 s)."""
    begun = time.time()
    gc.collect()
    return 5 * (time.time() - begun)


# ---- what a run records about its software -----------------------------------------------------

def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(nimllm.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(rt: Runtime) -> dict:
    return {"nimllm": nimllm.__version__, "git_commit": git_commit(), "python": platform.python_version(),
            "torch": torch.__version__, "device": rt.device, "world_size": rt.world_size,
            "gpu": torch.cuda.get_device_name(rt.device) if rt.device_type == "cuda" else None}
