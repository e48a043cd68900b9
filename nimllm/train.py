"""Training: from a corpus path to a trained model folder.

`run_training` decides what to do with the folder (start a new model, resume an interrupted run,
or continue a trained model on a new corpus), prepares the tokenizer and token shards, and runs
the loop: AdamW, linear warm-up then cosine decay (fitted to a --time budget as the run goes),
gradient accumulation, clipping, bf16 autocast on CUDA, periodic validation, atomic checkpoints,
Ctrl-C handling and DistributedDataParallel when started under torchrun.

Every micro-batch is drawn from a generator seeded by (seed, step, micro-batch index), and every
step seeds dropout the same way, so a run that is interrupted and resumed computes exactly the
losses of an uninterrupted one, and a run on N processes sees the batches a run on one does.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import subprocess
import time
import weakref
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import nimllm
from nimllm import checkpoint
from nimllm.config import PRESETS, ModelFolder, TrainConfig, UserError, default_preset_name, override
from nimllm.data import (CorpusInfo, TokenShards, corpus_fingerprint, iter_texts_for_tokenizer, prepare_corpus,
                         prepared_with)
from nimllm.fileio import remove_stale_temps
from nimllm.metrics import MetricsLog, plot_losses, pyplot
from nimllm.model import GPT
from nimllm.tokenizer import Tokenizer


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


# ---- optimizer and schedule --------------------------------------------------------------------

def build_optimizer(model: GPT, tcfg: TrainConfig, device_type: str):
    """AdamW with weight decay on matrices only (norm gains are left alone); fused on CUDA."""
    if tcfg.low_memory:
        return OptimizerInBackward(model, tcfg, fused=device_type == "cuda")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), fused=device_type == "cuda")


class OptimizerInBackward:
    """One AdamW per parameter, stepped by a hook as soon as backward has produced that parameter's
    gradient, which is then freed: the gradients (4 bytes a parameter) never all exist at once.
    The price: no clipping (it needs every gradient's norm first) and no accumulation."""

    def __init__(self, model: GPT, tcfg: TrainConfig, fused: bool):
        self.optimizers = [torch.optim.AdamW([p], lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), fused=fused,
                                             weight_decay=tcfg.weight_decay if p.dim() >= 2 else 0.0)
                           for p in model.parameters()]
        for p, opt in zip(model.parameters(), self.optimizers):
            # a weak reference: parameter -> hook -> optimizer -> parameter would be a cycle through
            # C++ that the garbage collector cannot see, keeping the model alive forever
            p.register_post_accumulate_grad_hook(partial(self._step_one, weakref.ref(opt)))

    @staticmethod
    def _step_one(opt_ref, param):
        opt = opt_ref()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @property
    def param_groups(self) -> list[dict]:   # fresh each time: load_state_dict replaces the group dicts
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: st for opt in self.optimizers for p, st in opt.state.items()}

    def state_dict(self) -> dict:
        return {"state": {}, "param_groups": [{**g, "params": [i]} for i, g in enumerate(self.param_groups)]}

    def load_state_dict(self, sd: dict) -> None:
        for i, opt in enumerate(self.optimizers):
            group = {**sd["param_groups"][i], "params": [0]}
            opt.load_state_dict({"state": {0: sd["state"][i]} if i in sd["state"] else {}, "param_groups": [group]})


WARMUP_SHARE = 0.05   # a short run warms up over this share of its steps at most, so it peaks and decays


def warmup_for(total_steps: int, tcfg: TrainConfig) -> int:
    """The preset's warm-up, or WARMUP_SHARE of the run when that is shorter: never the whole run."""
    return min(tcfg.warmup_steps, round(WARMUP_SHARE * total_steps))


@dataclass
class Schedule:
    """Linear warm-up over the first `warmup` steps, then cosine decay from lr to lr * min_lr_ratio, reached
    exactly at the last step (total_steps - 1). The decay's progress runs linearly from anchor_progress at
    anchor_step to 1 at the last step; a replan (a --time run re-fitting its length) moves the anchor to
    the current step, so the learning rate never jumps back and the run still ends at the final value.
    `fitted` says a --time run has measured and fixed its length: a resumed run keeps it."""
    total_steps: int
    warmup: int
    anchor_step: int
    anchor_progress: float = 0.0
    fitted: bool = False

    @classmethod
    def planned(cls, total_steps: int, tcfg: TrainConfig) -> "Schedule":
        warmup = warmup_for(total_steps, tcfg)
        return cls(total_steps, warmup, warmup)

    def progress(self, step: int) -> float:
        span = self.total_steps - 1 - self.anchor_step
        if span <= 0:
            return 1.0
        done = (step - self.anchor_step) / span
        return min(1.0, self.anchor_progress + (1 - self.anchor_progress) * max(done, 0.0))

    def lr(self, step: int, tcfg: TrainConfig) -> float:
        if step < self.warmup:
            return tcfg.lr * (step + 1) / self.warmup
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress(step)))
        return tcfg.lr * (tcfg.min_lr_ratio + (1 - tcfg.min_lr_ratio) * cosine)

    def replanned(self, step: int, total_steps: int, tcfg: TrainConfig) -> "Schedule":
        """The same schedule from `step` (the next step to run) on, ending at total_steps instead. A
        warm-up under way may only get shorter (its learning rate jumps forward, never back)."""
        total_steps = max(total_steps, step + 1)
        warmup = min(self.warmup, max(warmup_for(total_steps, tcfg), step))
        if step < warmup:
            return replace(self, total_steps=total_steps, warmup=warmup, anchor_step=warmup, anchor_progress=0.0)
        return replace(self, total_steps=total_steps, warmup=warmup, anchor_step=step,
                       anchor_progress=self.progress(step))   # (0 where the warm-up ends: the decay starts)


def default_steps(train_tokens: int, n_params: int, tokens_per_step: int, tcfg: TrainConfig) -> int:
    """Chinchilla's 20 tokens per parameter, but no more than max_epochs passes over a small
    corpus and no more than the preset's max_steps."""
    budget = min(tcfg.tokens_per_param * n_params, tcfg.max_epochs * train_tokens)
    return int(max(min(100, tcfg.max_steps), min(tcfg.max_steps, budget // tokens_per_step)))


def batch_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4096 + micro)


def timed(run, device: torch.device) -> float:
    """Seconds of a second call of `run` (the first warms up)."""
    for _ in range(2):
        begun = time.time()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.time() - begun


# ---- evaluation --------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: GPT, shards: TokenShards, rt: Runtime, batch_size: int, max_tokens: int | None,
             progress=None) -> dict:
    """Mean loss per token over the first max_tokens of a split, and the same in bits per byte.
    Training's validation, book training's report and `nimllm eval` all score with this.
    `progress(targets scored so far)` is called after each batch."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in shards.iter_windows(model.cfg.block_size, batch_size, max_tokens):
        with rt.autocast():
            logits = model(x.to(rt.device))
        total += torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.to(rt.device).flatten(),
                                                   reduction="sum").item()
        count += y.numel()
        if progress:
            progress(count)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "bpb": loss / math.log(2) * shards.num_tokens / max(shards.num_bytes, 1)}


# ---- deciding what to do with the folder -------------------------------------------------------

def plan(folder: ModelFolder, fingerprint: str, fresh: bool) -> str:
    """'new', 'resume' (an interrupted run on this corpus), 'done' (already trained on it) or
    'continue' (a trained model meets a new corpus: book training)."""
    if fresh or not folder.config.exists() or not (folder.weights.exists() or folder.train_state.exists()):
        return "new"
    progress = checkpoint.read_progress(folder)
    if progress and progress.get("corpus") == fingerprint:
        return "done" if progress.get("finished") else "resume"
    return "continue"


def clear_for_fresh_start(folder: ModelFolder, log) -> None:
    """--fresh: the trained model goes. What it learned in conversations (the memories, the conversations
    themselves, and the Fisher and control set of the old base) would be added onto the new model, so it
    is moved aside, never deleted; a note says where (there is no asking when stdin is not a terminal)."""
    for path in (folder.weights, folder.train_state, folder.metrics, folder.loss_plot, folder.tokenizer):
        path.unlink(missing_ok=True)
    shutil.rmtree(folder.data, ignore_errors=True)
    learned = [path for path in (folder.store, Path(f"{folder.store}-wal"), Path(f"{folder.store}-shm"),
                                 folder.memory, folder.control) if path.exists()]
    if learned:
        aside = folder.root / time.strftime("previous-%Y-%m-%d-%H%M%S")
        aside.mkdir()
        for path in learned:
            path.rename(aside / path.name)
        log(f"--fresh: the old model's memories and conversations are kept in {aside}")


def report_corpus(info: CorpusInfo, log) -> None:
    s = info.stats
    if s.skipped_binary or s.skipped_unreadable:
        log(f"skipped {s.skipped_binary} binary and {s.skipped_unreadable} unreadable files")
    if s.replaced_bytes:
        log(f"warning: replaced {s.replaced_bytes} invalid UTF-8 bytes in {s.files_with_replaced_bytes} files with U+FFFD")
    if s.skipped_lines:
        log(f"warning: skipped {s.skipped_lines} JSONL lines without a \"text\" string")


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


def format_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.0f}{unit}" if n >= 10 * size else f"{n / size:.1f}{unit}"
    return str(int(n))


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ---- the run -----------------------------------------------------------------------------------

class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step and save."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.requested:          # a second Ctrl-C while saving: the save is atomic, so just go
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_training(corpus: Path, folder: ModelFolder, preset: str | None = None, model_overrides: dict | None = None,
                 train_overrides: dict | None = None, steps: int | None = None, time_budget: float | None = None,
                 vocab_size: int = 8192, fresh: bool = False, device: str | None = None,
                 log=print, mix_in: list[Path] = (), started: float | None = None,
                 after_training: Callable[[GPT], float] | None = None) -> dict:
    """Train (or resume, or continue) the model in `folder` on `corpus`, with the corpora `mix_in`
    (the agent skills) read as part of it. Returns a summary dict; 'interrupted' is True when Ctrl-C
    stopped it (the checkpoint is saved and resumable).
    `time_budget` is wall-clock seconds from `started` (time.time() when the command began; default
    now), the end of whatever the caller runs after training included: `after_training(model)`
    estimates those seconds."""
    started = started or time.time()
    rt = setup_runtime(device)
    log = log if rt.is_main else (lambda *a, **k: None)
    corpus = Path(corpus).expanduser()
    if not corpus.exists():
        raise UserError(f"no such file or folder: {corpus}")
    if rt.is_main and folder.root.exists() and (freed := remove_stale_temps(folder.root)):
        log(f"removed {freed / 1e6:.1f} MB of temporary files that killed writes left in {folder.root}")
    sources = [corpus, *map(Path, mix_in)] if mix_in else corpus
    fingerprint = corpus_fingerprint(sources)
    action = plan(folder, fingerprint, fresh)
    if action == "done":
        progress = checkpoint.read_progress(folder)
        log(f"{folder.root} is already trained on {corpus} ({progress['step']} steps); "
            f"`nimllm generate` to use it, --fresh to train it again from scratch")
        return {"action": "done", "step": progress["step"]}

    if action == "new":
        preset = preset or default_preset_name(pick_device(device))
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        model_cfg = override(PRESETS[preset].model, **(model_overrides or {}))
        tcfg = override(PRESETS[preset].train, **(train_overrides or {}))
        corpora = []
        if rt.is_main:
            if fresh:
                clear_for_fresh_start(folder, log)
            folder.root.mkdir(parents=True, exist_ok=True)
            log(f"training a byte-level BPE tokenizer ({vocab_size} tokens) on {corpus} ...")
            begun = time.time()
            Tokenizer.train(iter_texts_for_tokenizer(sources), vocab_size=vocab_size).save(folder.tokenizer)
            log(f"tokenizer: {time.time() - begun:.1f} s")
    else:
        saved = checkpoint.load_config(folder)
        preset, model_cfg, corpora = saved["preset"], saved["model"], saved["corpora"]
        tcfg = override(saved["train"], **(train_overrides or {}))
    rt.barrier()
    tokenizer = Tokenizer.load(folder.tokenizer)
    model_cfg = replace(model_cfg, vocab_size=-(-tokenizer.vocab_size // 64) * 64)  # a multiple of 64 runs faster

    data_dir = folder.data / fingerprint
    if rt.is_main and not prepared_with(data_dir, tokenizer):
        log(f"tokenizing {corpus} ...")
        begun = time.time()
        report_corpus(prepare_corpus(sources, tokenizer, data_dir, block_size=model_cfg.block_size), log)
        log(f"data: {time.time() - begun:.1f} s to tokenize and prepare the corpus")
    rt.barrier()
    train_shards, val_shards = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    if action != "resume":
        corpora = [c for c in corpora if c["fingerprint"] != fingerprint]
        corpora.append({"path": str(corpus.resolve()), "fingerprint": fingerprint, "data": f"data/{fingerprint}",
                        "tokens": train_shards.num_tokens, **({"mixed_in": list(map(str, mix_in))} if mix_in else {})})
    if tcfg.low_memory:
        tcfg = replace(tcfg, grad_accum=1)
        if rt.world_size > 1:
            raise UserError("--low-memory steps the optimizer inside backward, which one process only can do")
    if rt.is_main:
        checkpoint.save_config(folder, model_cfg, tcfg, preset, corpora)

    torch.manual_seed(tcfg.seed)   # the same initial weights on every process and every run
    model = GPT(model_cfg).to(rt.device)
    optimizer = build_optimizer(model, tcfg, rt.device_type)
    progress = {"step": 0, "elapsed_s": 0.0}
    if action == "resume":
        progress = checkpoint.load_train_state(folder, model, optimizer)
        log(f"resuming from step {progress['step']}")
    elif action == "continue":
        weights, _ = checkpoint.load_model(folder)
        model.load_state_dict(weights.state_dict())
        log(f"continuing {folder.root} (trained on {', '.join(Path(c['path']).name for c in corpora[:-1])}) on {corpus}")

    micro_per_rank = tcfg.grad_accum // rt.world_size
    if micro_per_rank * rt.world_size != tcfg.grad_accum:
        raise UserError(f"gradient accumulation {tcfg.grad_accum} is not divisible by {rt.world_size} processes")
    tokens_per_step = tcfg.micro_batch * tcfg.grad_accum * model_cfg.block_size
    if "schedule" in progress:   # a resumed run keeps its schedule
        schedule = Schedule(**progress["schedule"])
    else:
        schedule = Schedule.planned(steps or progress.get("total_steps") or default_steps(
            train_shards.num_tokens, model.num_params(), tokens_per_step, tcfg), tcfg)
    time_budget = time_budget or progress.get("time_budget_s")
    fit = TimeFit(time_budget, steps, started, after_training) if time_budget and not schedule.fitted else None
    progress.update(corpus=fingerprint, schedule=asdict(schedule), time_budget_s=time_budget, finished=False)

    previous = [c for c in corpora[:-1] if (folder.root / c["data"] / "meta.json").exists()]
    before = {c["path"]: evaluate(model, TokenShards(folder.root / c["data"], "val"), rt, tcfg.micro_batch,
                                  tcfg.eval_tokens) for c in previous} if action == "continue" and rt.is_main else {}

    info = run_info(rt)
    n_docs = CorpusInfo.load(data_dir).train.documents
    length = (f"steps of {format_count(tokens_per_step)} tokens, as many as fit in --time {format_eta(time_budget)}"
              if fit else f"{schedule.total_steps} steps of {format_count(tokens_per_step)} tokens")
    log(f"training {format_count(model.num_params())} params on {format_count(n_docs)} documents "
        f"({format_count(train_shards.num_tokens)} tokens) | preset {preset} | {rt.device}"
        f"{f' x{rt.world_size}' if rt.world_size > 1 else ''} | {length}")
    log(f"nimllm {info['nimllm']} (commit {info['git_commit'] or 'unknown'}) | python {info['python']} | "
        f"torch {info['torch']}{' | ' + info['gpu'] if info['gpu'] else ''} | config and log in {folder.metrics}")
    if rt.device_type == "cpu" and preset == "tiny" and action == "new":
        log("note: on a CPU the default is the tiny preset; a GPU trains the full 103m model (--preset 103m)")

    metrics = MetricsLog(folder.metrics, progress["step"] if action == "resume" else None) if rt.is_main else None
    if metrics:
        metrics.write(event="start", step=progress["step"], action=action, corpus=str(corpus), preset=preset,
                      model=asdict(model_cfg), train=asdict(tcfg), total_steps=schedule.total_steps, run=info)
    summary = train_loop(model, optimizer, tcfg, rt, train_shards, val_shards, folder, progress, metrics, log, fit)
    if metrics:
        metrics.close()
    summary["action"] = action
    if before and not summary["interrupted"]:
        summary["forgetting"] = {}
        for c in previous:
            after = evaluate(model, TokenShards(folder.root / c["data"], "val"), rt, tcfg.micro_batch, tcfg.eval_tokens)
            summary["forgetting"][c["path"]] = {"before": before[c["path"]], "after": after}
            log(f"previous corpus {Path(c['path']).name}: validation {before[c['path']]['bpb']:.3f} -> "
                f"{after['bpb']:.3f} bits per byte ({after['bpb'] - before[c['path']]['bpb']:+.3f} forgotten)")
    if rt.world_size > 1:
        rt.barrier()   # leave together: a rank tearing gloo down while another still talks aborts it
        dist.destroy_process_group()
    return summary


def check_replicas_in_sync(model: GPT, log) -> None:
    """DDP keeps every process's weights identical; compare per-tensor checksums to be sure."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("the training processes' weights diverged")
    log(f"replicas in sync: {len(sums)} tensors identical on {len(gathered)} processes")


def save_checkpoint(folder: ModelFolder, model: GPT, optimizer, progress: dict, rt: Runtime) -> None:
    if rt.is_main:
        checkpoint.save_train_state(folder, model, optimizer, progress)
        checkpoint.save_weights(folder, model, progress["step"])
        plot_losses(folder.metrics, folder.loss_plot, title=str(folder.root.name))


PILOT_SKIPPED = 2   # a process's first steps compile and warm kernels up: their time says nothing of the rest
PILOT_TIMED = 3     # the steps whose throughput a --time run is first fitted to


class TimeFit:
    """Fits a --time run's length to the wall clock. After the pilot (PILOT_SKIPPED + PILOT_TIMED steps)
    it measures what the end of the run costs and fixes the steps that fit before it; after every later
    step it fits again with the throughput measured so far, so that the run ends on time even when the
    machine slows down, and the schedule (see Schedule.replanned) still ends at its final learning rate."""

    def __init__(self, budget: float, steps_cap: int | None, started: float, after_training):
        self.budget, self.steps_cap, self.started, self.after_training = budget, steps_cap, started, after_training
        self.first_step, self.setup_s = 0, 0.0   # where this process's steps begin, and the seconds before them
        self.timed_from: tuple[int, float] | None = None   # (step, elapsed) where the timed steps begin
        self.finishing_s = 0.0   # the final validation and checkpoint, and the caller's work after training

    def begin(self, step: int) -> None:
        self.first_step, self.setup_s = step, time.time() - self.started

    def rate(self, step: int, elapsed: float) -> float:
        """Optimizer steps per second since the pilot, the periodic validations and checkpoints included
        (they recur)."""
        timed_step, timed_elapsed = self.timed_from
        return (step - timed_step) / max(elapsed - timed_elapsed, 1e-9)

    def measure_finishing(self, model: GPT, val_shards: TokenShards, rt: Runtime, tcfg: TrainConfig, save) -> float:
        """Seconds the end of the run will take: its validation, timed on one batch; its checkpoint, timed by
        saving one now (a resume can start from it; pyplot is imported first, as the last save will find
        it); and the caller's after_training estimate."""
        batch_tokens = tcfg.micro_batch * model.cfg.block_size
        batch = timed(lambda: evaluate(model, val_shards, rt, tcfg.micro_batch, batch_tokens), torch.device(rt.device))
        validation = batch * math.ceil(min(tcfg.eval_tokens, val_shards.num_tokens) / batch_tokens)
        pyplot()
        begun = time.time()
        save()
        return validation + time.time() - begun + (self.after_training(model) if self.after_training else 0.0)

    def refit(self, schedule: Schedule, step: int, elapsed: float, since_started: float, tcfg: TrainConfig,
              measure_finishing, rt: Runtime, log) -> Schedule:
        """The schedule fitted to the time left after `step` (steps done); unchanged during the pilot.
        `measure_finishing()` is called once, on the first process, at the end of the pilot."""
        if step - self.first_step == PILOT_SKIPPED:
            self.timed_from = (step, elapsed)
        if step - self.first_step < PILOT_SKIPPED + PILOT_TIMED:
            return schedule
        rate = self.rate(step, elapsed)
        if not schedule.fitted:
            begun = time.time()
            finishing = measure_finishing() if rt.is_main else 0.0
            self.finishing_s, paused = agree_max([finishing, time.time() - begun], rt)
            since_started += paused
            self.timed_from = (self.timed_from[0], self.timed_from[1] + paused)   # (a one-off: not in the rate)
        left = self.budget - since_started - self.finishing_s
        fits = step + max(1, round(left * rate))   # at least one more step: the one at the final lr
        total = min(fits, self.steps_cap or fits)
        fitted = replace(schedule.replanned(step, total, tcfg) if total != schedule.total_steps else schedule,
                         fitted=True)
        if not schedule.fitted:
            log(self.plan_line(fitted, fits, rate))
        return fitted

    def plan_line(self, schedule: Schedule, fits: int, rate: float) -> str:
        plan = (f"--time {format_eta(self.budget)}: {fits} steps fit (warm-up {schedule.warmup}, measured "
                f"{rate:.2f} opt/s; {self.setup_s:.1f} s before the first step, {self.finishing_s:.1f} s kept "
                f"for the last validation, save and what follows)")
        if schedule.total_steps < fits:
            plan += f"; --steps {schedule.total_steps} is fewer, so {schedule.total_steps} steps"
        return plan


def agree_max(values: list[float], rt: Runtime) -> list[float]:
    """The largest of each value over all processes, so that they all decide alike."""
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    if rt.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def train_loop(model: GPT, optimizer, tcfg: TrainConfig, rt: Runtime, train_shards: TokenShards,
               val_shards: TokenShards, folder: ModelFolder, progress: dict, metrics, log,
               fit: TimeFit | None = None) -> dict:
    raw_model = model
    model.activation_checkpointing = tcfg.activation_checkpointing or tcfg.low_memory
    if tcfg.compile and rt.device_type == "cuda":
        if tcfg.low_memory:   # block by block, so each block's gradients arrive (and go) on their own
            for block in model.blocks:
                block.compile()
        else:
            model = torch.compile(model)
    if rt.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[rt.device] if rt.device_type == "cuda" else None)
    micro_per_rank = tcfg.grad_accum // rt.world_size
    block = raw_model.cfg.block_size
    tokens_per_step = tcfg.micro_batch * tcfg.grad_accum * block
    schedule = Schedule(**progress["schedule"])
    step, elapsed = progress["step"], progress["elapsed_s"]
    run_start, elapsed_at_start = time.time(), elapsed
    last_ckpt, last_log, last_log_step = run_start, run_start, step
    progress["finished"] = step >= schedule.total_steps
    if fit:
        fit.begin(step)
        measure_finishing = partial(fit.measure_finishing, raw_model, val_shards, rt, tcfg,
                                    partial(save_checkpoint, folder, raw_model, optimizer, progress, rt))
    stopping, val = False, None
    if progress["finished"]:   # resumed a run whose last checkpoint came at its very end
        save_checkpoint(folder, raw_model, optimizer, progress, rt)
    model.train()
    with StopRequest() as stop:
        while not (progress["finished"] or stopping):
            lr = schedule.lr(step, tcfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(tcfg.seed * 1_000_003 + step * 64 + rt.rank)   # dropout masks
            loss_sum = torch.zeros((), device=rt.device)
            for i in range(micro_per_rank):
                x, y = train_shards.get_batch(tcfg.micro_batch, block,
                                              batch_generator(tcfg.seed, step, rt.rank * micro_per_rank + i))
                x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
                last_micro = i == micro_per_rank - 1
                with (model.no_sync() if rt.world_size > 1 and not last_micro else nullcontext()), \
                        rt.autocast(cache=not tcfg.low_memory):
                    loss = model(x, y) / micro_per_rank
                loss.backward()
                loss_sum += loss.detach()
            grad_norm = None
            if not tcfg.low_memory:   # (in low-memory mode backward has already stepped)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(raw_model.parameters(), tcfg.grad_clip))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1

            # all processes agree on whether to stop and on the clock, so they stay in lockstep
            now = time.time()
            agreed = torch.tensor([float(stop.requested), elapsed_at_start + now - run_start,
                                   now - fit.started if fit else 0.0], dtype=torch.float64, device=rt.device)
            if rt.world_size > 1:
                dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            stopping, elapsed, since_started = bool(agreed[0].item()), float(agreed[1].item()), float(agreed[2].item())
            progress.update(step=step, elapsed_s=elapsed)
            if fit and step < schedule.total_steps:
                schedule = fit.refit(schedule, step, elapsed, since_started, tcfg, measure_finishing, rt, log)
            progress.update(schedule=asdict(schedule), finished=step >= schedule.total_steps)

            if step % tcfg.log_interval == 0 or progress["finished"]:
                now = time.time()
                rate = (step - last_log_step) / max(now - last_log, 1e-9)
                remaining = (schedule.total_steps - step) / rate
                log(f"step {step} / {schedule.total_steps} | loss {loss_sum.item():.4f} | {rate:.2f} opt/s | "
                    f"{format_count(rate * tokens_per_step)} tok/s | lr {lr:.2e} | eta {format_eta(remaining)}")
                if metrics:
                    metrics.write(step=step, loss=loss_sum.item(), lr=lr, grad_norm=grad_norm, opt_per_s=rate,
                                  tokens_per_s=rate * tokens_per_step, elapsed_s=elapsed)
                last_log, last_log_step = now, step
            if rt.is_main and (step % tcfg.eval_interval == 0 or progress["finished"]):
                val = evaluate(raw_model, val_shards, rt, tcfg.micro_batch, tcfg.eval_tokens)
                log(f"step {step} | validation loss {val['loss']:.4f} | {val['bpb']:.4f} bits per byte")
                metrics.write(step=step, val_loss=val["loss"], val_bpb=val["bpb"])
            if progress["finished"] or stopping or time.time() - last_ckpt > tcfg.checkpoint_minutes * 60:
                save_checkpoint(folder, raw_model, optimizer, progress, rt)
                last_ckpt = time.time()
    if rt.world_size > 1:
        check_replicas_in_sync(raw_model, log)
    if stopping:
        log(f"stopped at step {step}; the checkpoint is saved: run the same command again to resume")
    return {"interrupted": stopping and not progress["finished"], "step": step, "val": val}
