"""Training on several GPUs: tokens/s and scaling efficiency, loss curves against one GPU with the
same global batch, and a multi-GPU checkpoint resumed on one GPU and on the CPU.

    python3 bench/ddp.py --gpus 2 --steps 200 --out bench/results/ddp.json

Every run is the real `nimllm train` command (under torchrun for N > 1) on the default corpus,
sharing one tokenizer and one set of token shards so that only the process count differs.
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import common  # noqa: E402  (bench/common.py)
from nimllm.checkpoint import read_progress  # noqa: E402
from nimllm.config import ModelFolder  # noqa: E402
from nimllm.metrics import read_metrics  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
       # keep NVLink multicast off on the lent machines
       "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def train_command(n_gpus: int, folder: Path, args, *extra) -> list[str]:
    launcher = [sys.executable, "-m", "nimllm.cli"] if n_gpus == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_gpus}", "-m", "nimllm.cli"]
    return [*launcher, "train", *([args.corpus] if args.corpus else []), "--model", str(folder),
            "--preset", args.preset, "--steps", str(args.steps), "--batch-size", str(args.micro_batch),
            "--grad-accum", str(args.grad_accum), *extra]


def run(cmd, log: Path, devices: str | None = None, interrupt_at: int | None = None) -> int:
    """Run a training command, its output to `log`; with interrupt_at, press Ctrl-C (SIGINT to the
    whole process group, as a terminal does) once that step is logged."""
    env = {**ENV, **({"CUDA_VISIBLE_DEVICES": devices} if devices is not None else {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=REPO, start_new_session=True)
        for line in proc.stdout:
            out.write(line)
            if interrupt_at and line.startswith(f"step {interrupt_at} /"):
                os.killpg(proc.pid, signal.SIGINT)
                interrupt_at = None
        return proc.wait()


def prepared_copy(source: Path, target: Path) -> Path:
    """A model folder with source's config, tokenizer and shards but no training yet."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(
        "model.safetensors", "train_state.safetensors", "metrics.jsonl", "loss.png"))
    return target


def curve(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(folder / "metrics.jsonl") if "loss" in r}


def steady_tokens_per_s(folder: Path, skip: int) -> float:
    """Median over log intervals after the first `skip` steps (compilation and warm-up)."""
    return statistics.median(r["tokens_per_s"] for r in read_metrics(folder / "metrics.jsonl")
                             if "tokens_per_s" in r and r["step"] > skip)


def main():
    ap = common.parser(__doc__)
    ap.add_argument("--gpus", type=int, nargs="+", default=[2])
    ap.add_argument("--corpus", help="default: nimllm's built-in default corpus")
    ap.add_argument("--preset", default="103m")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--work", default="/tmp/nimllm-ddp")
    ap.add_argument("--out", default="bench/results/ddp.json")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    skip = min(30, args.steps // 4)

    # one GPU first: it also trains the tokenizer and tokenizes the corpus for everyone
    one = work / "gpu1"
    rc = run(train_command(1, one, args), work / "gpu1.log", devices="0")
    results = {"runs": {1: {"rc": rc, "tokens_per_s": steady_tokens_per_s(one, skip)}}}
    reference = curve(one)
    for n in args.gpus:
        folder = prepared_copy(one, work / f"gpu{n}")
        rc = run(train_command(n, folder, args), work / f"gpu{n}.log")
        losses = curve(folder)
        results["runs"][n] = {
            "rc": rc, "tokens_per_s": steady_tokens_per_s(folder, skip),
            "max_loss_difference_vs_1_gpu": max(abs(losses[s] - reference[s]) for s in reference),
            "loss_curve": losses}
        results["runs"][n]["scaling_efficiency"] = results["runs"][n]["tokens_per_s"] / (
            n * results["runs"][1]["tokens_per_s"])
    results["runs"][1]["loss_curve"] = reference

    # a checkpoint written by N GPUs, resumed on 1 GPU and on the CPU
    n = max(args.gpus)
    half = args.steps // 2
    multi = prepared_copy(one, work / "interrupted")
    rc_stop = run(train_command(n, multi, args), work / "interrupted.log", interrupt_at=half)
    cpu = work / "cpu"
    shutil.copytree(multi, cpu)
    rc_gpu = run(train_command(1, multi, args), work / "resume_gpu.log", devices="0")
    stopped = read_progress(ModelFolder(cpu))["step"]
    cpu_cmd = train_command(1, cpu, args, "--device", "cpu")
    cpu_cmd[cpu_cmd.index("--steps") + 1] = str(stopped + 2)        # two more steps are enough to show it
    cpu_cmd[cpu_cmd.index("--batch-size") + 1] = "1"
    rc_cpu = run(cpu_cmd, work / "resume_cpu.log", devices="")
    resumed = curve(multi)
    results["resume"] = {
        "interrupted_rc": rc_stop, "stopped_after_step": stopped, "gpus": n,
        "resume_on_1_gpu_rc": rc_gpu,
        "max_loss_difference_vs_uninterrupted_1_gpu": max(abs(resumed[s] - reference[s]) for s in reference),
        "resume_on_cpu_rc": rc_cpu, "cpu_log_tail": (work / "resume_cpu.log").read_text().splitlines()[-3:]}

    table = Table(title=f"{args.preset}, global batch {args.micro_batch * args.grad_accum} x context, "
                        f"{args.steps} steps")
    for col in ("GPUs", "tokens/s", "scaling efficiency", "max |loss - 1 GPU loss|"):
        table.add_column(col, justify="right")
    for k, r in sorted(results["runs"].items()):
        table.add_row(str(k), f"{r['tokens_per_s'] / 1e3:.0f}K", f"{r.get('scaling_efficiency', 1.0):.1%}",
                      f"{r.get('max_loss_difference_vs_1_gpu', 0.0):.4f}")
    console = Console()
    console.print(table)
    console.print(results["resume"])
    out = common.write_result(args.out, results)
    for log in work.glob("*.log"):   # the whole logs, next to the JSON
        shutil.copy(log, out.parent / f"ddp_{log.name}")


if __name__ == "__main__":
    main()
