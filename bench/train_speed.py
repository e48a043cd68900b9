"""Training speed: tokens per second, MFU and peak memory of full optimizer steps, NimLLM against a
plain eager reference of the same architecture (bench/reference_gpt.py), nanoGPT's shape, and with
--nanogpt DIR nanoGPT's own model.py (a checkout of github.com/karpathy/nanoGPT; none of it is in this
repository) at the same size, compiled and with its own configure_optimizers, as its train.py runs it.

    python3 bench/train_speed.py --preset 103m --micro-batch 64 32 --out bench/results/train_speed_h100.json
    python3 bench/train_speed.py --preset tiny --steps 3 --warmup 1        # the CPU smoke test

A step is what NimLLM's trainer does: grad_accum micro-batches of random tokens, each forward and
backward under the trainer's autocast, then gradient clipping, AdamW and zero_grad. The first
--warmup steps (where torch.compile compiles) are not timed. --low-memory adds rows that look for
settings keeping the 103m preset under 1.8 GB: activation checkpointing at small micro-batches, and
the optimizer applied inside backward so that the gradients never all exist at once.
"""
from __future__ import annotations

import gc
import importlib.util
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import common  # noqa: E402  (bench/common.py)
from nimllm.config import PRESETS, TrainConfig, default_preset_name  # noqa: E402
from nimllm.fp8 import use_fp8  # noqa: E402
from nimllm.model import GPT  # noqa: E402
from nimllm.runtime import Runtime, pick_device  # noqa: E402
from nimllm.optim import build_optimizer  # noqa: E402
from nimllm.train import Schedule  # noqa: E402
from reference_gpt import ReferenceGPT, reference_optimizer  # noqa: E402

H100_BF16_PEAK = 989.5e12    # dense bf16 FLOP/s of an H100 SXM
LOW_MEMORY_TARGET = 1.8e9    # bytes


@dataclass
class Variant:
    config: str                  # the row's label
    model: str                   # "nimllm", "reference", "nanogpt" (its shape) or "nanogpt model.py" (its code)
    compile: bool = False        # on CUDA and without --no-compile only, as the trainer does
    checkpointing: bool = False  # NimLLM's activation checkpointing
    optimizer: str = "fused"     # "fused" (NimLLM's build_optimizer) or "foreach" (the reference's)
    low_memory: bool = False     # NimLLM's --low-memory: optimizer in backward, blocks compiled one by one
    compile_mode: str | None = None  # torch.compile's mode; None is its default
    fp8: bool = False            # NimLLM's --fp8 (where the device has FP8 matmuls)


class LossOf(torch.nn.Module):
    """nanoGPT's GPT returns (logits, loss); a step wants the loss."""

    def __init__(self, gpt: torch.nn.Module):
        super().__init__()
        self.gpt = gpt

    def forward(self, x, y):
        return self.gpt(x, y)[1]


def nanogpt_model(directory: Path, cfg, tcfg: TrainConfig, rt: Runtime, compile_ok: bool):
    """nanoGPT's model.py from a checkout, at NimLLM's size (no bias, no dropout), on the device, with
    the optimizer its configure_optimizers makes (fused AdamW on CUDA), compiled as its train.py does."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", directory / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gpt = module.GPT(module.GPTConfig(block_size=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                                      n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0, bias=False)).to(rt.device)
    optimizer = gpt.configure_optimizers(tcfg.weight_decay, tcfg.lr, (tcfg.beta1, tcfg.beta2), rt.device_type)
    return LossOf(gpt), LossOf(torch.compile(gpt) if compile_ok else gpt), optimizer


def build(v: Variant, cfg, tcfg: TrainConfig, rt: Runtime, compile_ok: bool, nanogpt: Path | None = None):
    torch.manual_seed(0)
    tcfg = replace(tcfg, low_memory=v.low_memory, compile=v.compile and compile_ok)
    if v.model == "nanogpt model.py":
        return nanogpt_model(nanogpt, cfg, tcfg, rt, tcfg.compile)
    if v.model == "nimllm":
        model = GPT(cfg)
        model.activation_checkpointing = v.checkpointing or v.low_memory
        if v.fp8 and not use_fp8(model.blocks, torch.device(rt.device), print):
            raise RuntimeError(f"{rt.device} has no FP8 matmuls")   # the row says so; the others go on
    else:
        model = ReferenceGPT(cfg) if v.model == "reference" else ReferenceGPT(cfg, "layer", "learned")
    model = model.to(rt.device)
    optimizer = reference_optimizer(model, tcfg) if v.optimizer == "foreach" else build_optimizer(model, tcfg, rt.device_type)
    if not (v.compile and compile_ok):
        return model, model, optimizer
    if v.low_memory:  # as the trainer does: a whole-model compile would hold every gradient at once
        for block in model.blocks:
            block.compile()
        return model, model, optimizer
    return model, torch.compile(model, mode=v.compile_mode), optimizer


def peak_memory(rt: Runtime) -> float:
    if rt.device_type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def measure(v: Variant, micro_batch: int, grad_accum: int, cfg, tcfg: TrainConfig, rt: Runtime, args) -> dict:
    model, train_model, optimizer = build(v, cfg, tcfg, rt, args.compile_ok, args.nanogpt)
    total = args.warmup + args.steps
    schedule = Schedule.planned(total, tcfg)
    sync = torch.cuda.synchronize if rt.device_type == "cuda" else (lambda: None)

    def step(i: int):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(i, tcfg)
        for _ in range(grad_accum):
            x = torch.randint(cfg.vocab_size, (micro_batch, cfg.block_size), device=rt.device)
            y = torch.randint(cfg.vocab_size, (micro_batch, cfg.block_size), device=rt.device)
            with rt.autocast(cache=not v.low_memory):
                loss = train_model(x, y) / grad_accum
            loss.backward()
        if not v.low_memory:  # there the hooks have already updated every parameter
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    if rt.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup):
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(args.warmup, total):
        step(i)
    sync()
    seconds = time.perf_counter() - start

    n_params = sum(p.numel() for p in model.parameters())  # the tied embedding counts once
    tokens_per_s = args.steps * micro_batch * grad_accum * cfg.block_size / seconds
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    return {"params": n_params, "seconds": seconds, "tokens_per_s": tokens_per_s,
            "opt_steps_per_s": args.steps / seconds, "peak_memory_bytes": peak_memory(rt),
            "mfu": flops_per_token * tokens_per_s / args.peak_flops if args.peak_flops else None}


def variants(args) -> list[tuple[Variant, int]]:
    rows = [(v, mb) for mb in args.micro_batch for v in (
        Variant("nimllm", "nimllm", compile=True),
        Variant("nimllm eager", "nimllm"),
        Variant("reference eager", "reference", optimizer="foreach"),
        Variant("nanogpt-shape compiled", "nanogpt", compile=True),
        *([Variant("nanogpt model.py compiled", "nanogpt model.py", compile=True)] if args.nanogpt else []),
        Variant("nimllm cuda graphs", "nimllm", compile=True, compile_mode="reduce-overhead"),
        Variant("nimllm --fp8", "nimllm", compile=True, fp8=True))]
    if args.low_memory:
        rows += [(v, mb) for mb in args.low_memory_batches for v in (
            Variant("nimllm ckpt", "nimllm", compile=True, checkpointing=True),
            Variant("nimllm --low-memory (no clipping)", "nimllm", compile=True, low_memory=True),
            Variant("nimllm --low-memory eager", "nimllm", low_memory=True))]
    return [(v, mb) for v, mb in rows if not args.only or v.config in args.only]


def print_table(rows: list[dict], rt: Runtime, console: Console):
    memory = "peak memory GB" if rt.device_type == "cuda" else "max RSS GB (process)"
    table = Table()
    for col in ("config", "micro-batch", "tokens/s", "opt steps/s", "MFU", memory, "vs reference eager"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["config"], str(r["micro_batch"]), f"[red]{r['error'].split(':')[0]}", "", "", "", "")
            continue
        table.add_row(r["config"], str(r["micro_batch"]), f"{r['tokens_per_s']:,.0f}", f"{r['opt_steps_per_s']:.2f}",
                      "-" if r["mfu"] is None else f"{r['mfu']:.1%}", f"{r['peak_memory_bytes'] / 1e9:.2f}",
                      "-" if r["vs_reference"] is None else f"{r['vs_reference']:.2f}x")
    console.print(table)


def main():
    ap = common.parser(__doc__)
    ap.add_argument("--preset", help="default: 103m on a GPU, tiny otherwise")
    ap.add_argument("--micro-batch", type=int, nargs="+", help="default: the preset's")
    ap.add_argument("--grad-accum", type=int, default=1,
                    help="micro-batches per step (the speed per token barely depends on it)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens there)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--low-memory", action="store_true", help="add the rows that look for a peak under 1.8 GB")
    ap.add_argument("--low-memory-batches", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--peak-flops", type=float,
                    help=f"the device's peak FLOP/s for MFU (default on CUDA: an H100's bf16, {H100_BF16_PEAK:.4g})")
    ap.add_argument("--only", nargs="+", metavar="CONFIG", help="run only the rows with these labels")
    ap.add_argument("--nanogpt", type=Path, metavar="DIR",
                    help="a checkout of github.com/karpathy/nanoGPT: adds a row of its own model.py")
    common.device_and_out(ap, "train_speed")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rt = Runtime(pick_device(args.device))
    cuda = rt.device_type == "cuda"
    args.preset = args.preset or default_preset_name(rt.device_type)
    preset = PRESETS[args.preset]
    args.micro_batch = args.micro_batch or [preset.train.micro_batch]
    args.peak_flops = args.peak_flops or (H100_BF16_PEAK if cuda else None)
    args.compile_ok = cuda and not args.no_compile
    cfg = replace(preset.model, dropout=0.0)  # the reference has no dropout (and 103m trains without it)
    tcfg = preset.train

    console = common.console()
    device_name = torch.cuda.get_device_name(rt.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    console.print(f"{device_name} ({rt.device}) | torch {torch.__version__} | preset {args.preset}: "
                  f"{cfg.n_layer} layers x {cfg.n_embd}, context {cfg.block_size}, vocab {cfg.vocab_size} | "
                  f"grad_accum {args.grad_accum}, {args.steps} timed steps after {args.warmup}")
    if not args.compile_ok:
        console.print("torch.compile is off (CPU or --no-compile): the compiled rows run eagerly")

    rows = []
    for v, mb in variants(args):
        grad_accum = 1 if v.low_memory else args.grad_accum
        row = {**asdict(v), "compiled": v.compile and args.compile_ok, "micro_batch": mb, "grad_accum": grad_accum}
        try:
            row.update(measure(v, mb, grad_accum, cfg, tcfg, rt, args))
            console.print(f"{v.config} | micro-batch {mb} | {row['tokens_per_s']:,.0f} tokens/s | "
                          f"{row['peak_memory_bytes'] / 1e9:.2f} GB")
        except Exception as e:  # an OOM or a compile failure costs its row, not the benchmark
            row["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            console.print(f"{v.config} | micro-batch {mb} | [red]{row['error']}")
        rows.append(row)
        # free this row's model, optimizer and compiled graphs; a fresh compile per row also keeps
        # dynamo from reusing graphs across rows or going dynamic on the second micro-batch
        gc.collect()
        torch._dynamo.reset()
        if cuda:
            torch.cuda.empty_cache()

    reference = {r["micro_batch"]: r["tokens_per_s"] for r in rows
                 if r["config"] == "reference eager" and "error" not in r}
    for r in rows:
        if "error" not in r:
            ref = reference.get(r["micro_batch"])
            r["vs_reference"] = r["tokens_per_s"] / ref if ref else None
    print_table(rows, rt, console)
    if args.low_memory and cuda:
        fits = [f"{r['config']} at {r['micro_batch']}" for r in rows
                if (r["checkpointing"] or r["low_memory"]) and r.get("peak_memory_bytes", float("inf")) < LOW_MEMORY_TARGET]
        console.print(f"under {LOW_MEMORY_TARGET / 1e9:.1f} GB: {', '.join(fits) or 'none'}")

    header = common.header(device_name, cuda=torch.version.cuda, preset=args.preset, model=asdict(cfg),
                           memory="cuda max_memory_allocated" if cuda else "process max RSS",
                           args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                 if k != "compile_ok"})
    console.print(f"wrote {common.write_result(args.out, {'header': header, 'rows': rows})}")


if __name__ == "__main__":
    main()
