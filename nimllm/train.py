"""Training: from a corpus path to a trained model folder.

`run_training` decides what to do with the folder (start a new model, resume an interrupted run,
or continue a trained model on a new corpus), prepares the tokenizer and token shards, and runs
the loop: AdamW, linear warm-up then cosine decay (fitted to a --time budget as the run goes),
gradient accumulation, clipping, bf16 autocast on CUDA, periodic validation, atomic checkpoints,
Ctrl-C handling and DistributedDataParallel when started under torchrun. Each of those is a named
step, and the steps hand one `TrainingRun` on to each other.

Every micro-batch is drawn from a generator seeded by (seed, step, micro-batch index), and every
step seeds dropout the same way, so a run that is interrupted and resumed computes exactly the
losses of an uninterrupted one, and a run on N processes sees the batches a run on one does.
"""
from __future__ import annotations

import math
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nimllm import checkpoint, dialogues
from nimllm.config import (LOW_MEMORY_MICRO_BATCH, PRESETS, DefaultChoice, ModelConfig, ModelFolder, TrainConfig,
                           UserError, default_choice, default_preset_name, override)
from nimllm.data import (CorpusInfo, TokenShards, corpus_bytes, corpus_fingerprint, iter_texts_for_tokenizer,
                         prepare_corpus, prepared_with)
from nimllm.evaluate import evaluate
from nimllm.fileio import remove_stale_temps
from nimllm.fp8 import use_fp8
from nimllm.metrics import MetricsLog, plot_losses, pyplot
from nimllm.model import GPT
from nimllm.optim import build_optimizer
from nimllm.runtime import Runtime, exit_seconds, pick_device, run_info, setup_runtime, timed
from nimllm.tokenizer import Tokenizer


# ---- schedule ----------------------------------------------------------------------------------

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
        progress = self.progress(step)
        if tcfg.schedule == "wsd":
            decay = min(1.0, (1 - progress) / tcfg.cooldown_share)
        else:
            decay = 0.5 * (1 + math.cos(math.pi * progress))
        return tcfg.lr * (tcfg.min_lr_ratio + (1 - tcfg.min_lr_ratio) * decay)

    def replanned(self, step: int, total_steps: int, tcfg: TrainConfig) -> "Schedule":
        """The same schedule from `step` (the next step to run) on, ending at total_steps instead. A
        warm-up under way may only get shorter (its learning rate jumps forward, never back)."""
        total_steps = max(total_steps, step + 1)
        warmup = min(self.warmup, max(warmup_for(total_steps, tcfg), step))
        if step < warmup:
            return replace(self, total_steps=total_steps, warmup=warmup, anchor_step=warmup, anchor_progress=0.0)
        return replace(self, total_steps=total_steps, warmup=warmup, anchor_step=step,
                       anchor_progress=self.progress(step))   # (0 where the warm-up ends: the decay starts)


def max_epochs_steps(train_tokens: int, tokens_per_step: int, tcfg: TrainConfig) -> int:
    """The steps of max_epochs passes over the corpus: more learns a small corpus by heart."""
    return int(tcfg.max_epochs * train_tokens // tokens_per_step)


def default_steps(train_tokens: int, n_params: int, tokens_per_step: int, tcfg: TrainConfig) -> int:
    """Chinchilla's 20 tokens per parameter, but no more than max_epochs passes over a small
    corpus and no more than the preset's max_steps."""
    chinchilla = int(tcfg.tokens_per_param * n_params // tokens_per_step)
    return max(min(100, tcfg.max_steps),
               min(tcfg.max_steps, chinchilla, max_epochs_steps(train_tokens, tokens_per_step, tcfg)))


def batch_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4096 + micro)


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


def format_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.0f}{unit}" if n >= 10 * size else f"{n / size:.1f}{unit}"
    return str(int(n))


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ---- the run, step by step ---------------------------------------------------------------------

@dataclass
class TrainingRun:
    """What the steps of `run_training` hand on to each other, filled in as they go: where it runs,
    what plan decided, the settings, the data, the model, its schedule and its progress. `progress` is
    what the checkpoint records (step, elapsed_s, corpus, schedule, time_budget_s, finished)."""
    corpus: Path
    folder: ModelFolder
    rt: Runtime
    log: Callable[..., None]
    mix_in: list[Path]
    sources: Path | list[Path]   # the corpus, or the corpus and the corpora mixed into it
    fingerprint: str
    action: str                  # plan's answer: 'new', 'resume', 'continue' or 'done'
    preset: str = ""
    model_cfg: ModelConfig | None = None
    tcfg: TrainConfig | None = None
    corpora: list[dict] = field(default_factory=list)   # what the model has trained on, this corpus last
    tokenizer: Tokenizer | None = None
    data_dir: Path | None = None
    train_shards: TokenShards | None = None
    val_shards: TokenShards | None = None
    model: GPT | None = None
    optimizer: Any = None
    schedule: Schedule | None = None
    fit: TimeFit | None = None   # a --time run whose length is not fitted yet
    progress: dict = field(default_factory=lambda: {"step": 0, "elapsed_s": 0.0})
    best_weights: dict | None = None   # on the CPU: those of progress["best"], the lowest validation so far

    @property
    def tokens_per_step(self) -> int:
        return self.tcfg.micro_batch * self.tcfg.grad_accum * self.model_cfg.block_size


def choose_defaults(corpus: Path, folder: ModelFolder, device: str | None, fresh: bool, preset: str | None,
                    vocab_size: int | None, chat_skills: int | None, model_flags: dict,
                    train_flags: dict) -> DefaultChoice:
    """What a run takes where its flags say nothing. A named preset is taken as it is (8192 tokens, 20,000
    dialogues); a folder trained before keeps the dialogues it was trained with, so that a resume reads the
    same corpus; a new model without a preset is chosen by the corpus's size and the device
    (config.default_choice). Flags given win over all of these."""
    if folder.config.exists() and not fresh:
        mixed = [dialogues.count_in(path) for c in checkpoint.load_config(folder)["corpora"][-1:]
                 for path in c.get("mixed_in", [])]
        choice = DefaultChoice(preset, chat_skills=max([n for n in mixed if n] or [0]))
    elif preset:
        choice = DefaultChoice(preset)
    else:
        choice = default_choice(corpus_bytes(corpus.expanduser()), pick_device(device))
    given = lambda flags: {k: v for k, v in flags.items() if v is not None}   # noqa: E731
    train = {**choice.train, **given(train_flags)}
    if train.get("low_memory") and train_flags.get("micro_batch") is None:
        train["micro_batch"] = min(train.get("micro_batch", LOW_MEMORY_MICRO_BATCH), LOW_MEMORY_MICRO_BATCH)
    return replace(choice, vocab_size=vocab_size or choice.vocab_size,
                   chat_skills=choice.chat_skills if chat_skills is None else chat_skills,
                   model={**choice.model, **given(model_flags)}, train=train)


def run_training(corpus: Path, folder: ModelFolder, preset: str | None = None, model_overrides: dict | None = None,
                 train_overrides: dict | None = None, steps: int | None = None, time_budget: float | None = None,
                 vocab_size: int = 8192, fresh: bool = False, device: str | None = None,
                 log=print, mix_in: list[Path] = (), started: float | None = None,
                 after_training: Callable[[GPT], float] | None = None) -> dict:
    """Train (or resume, or continue) the model in `folder` on `corpus`, with the corpora `mix_in`
    (the agent skills) read as part of it. Returns a summary dict; 'interrupted' is True when Ctrl-C
    stopped it (the checkpoint is saved and resumable).
    A `time_budget` is wall-clock seconds from this call to its return. Given `started` (time.time()
    when the process began), it is the whole command's instead: the seconds before this call count,
    and so do those after it, `after_training(model)` (the caller's estimate of its own work)
    and the process's exit."""
    time_fit = partial(TimeFit, started=started or time.time(), after_training=after_training,
                       to_exit=started is not None)
    run = open_run(Path(corpus).expanduser(), folder, device, log, mix_in, fresh)
    if run.action == "done":
        progress = checkpoint.read_progress(folder)
        run.log(f"{folder.root} is already trained on {run.corpus} ({progress['step']} steps); "
                f"`nimllm generate` to use it, --fresh to train it again from scratch")
        return {"action": "done", "step": progress["step"]}
    choose_settings(run, preset, model_overrides, train_overrides, vocab_size, fresh, device)
    prepare_data(run)
    save_settings(run)
    build_model(run)
    schedule(run, steps, time_budget, time_fit)
    previous, before = score_previous_corpora(run)
    metrics = open_metrics(run, announce(run))
    summary = train_loop(run, metrics)
    if metrics:
        metrics.close()
    summary["action"] = run.action
    if before and not summary["interrupted"]:
        report_forgetting(run, previous, before, summary)
    if run.rt.world_size > 1:
        run.rt.barrier()   # leave together: a rank tearing gloo down while another still talks aborts it
        dist.destroy_process_group()
    return summary


def open_run(corpus: Path, folder: ModelFolder, device: str | None, log, mix_in: list[Path],
             fresh: bool) -> TrainingRun:
    """Where this process runs, what it reads, and what plan says to do with the folder."""
    rt = setup_runtime(device)
    log = log if rt.is_main else (lambda *a, **k: None)
    if not corpus.exists():
        raise UserError(f"no such file or folder: {corpus}")
    if rt.is_main and folder.root.exists() and (freed := remove_stale_temps(folder.root)):
        log(f"removed {freed / 1e6:.1f} MB of temporary files that killed writes left in {folder.root}")
    sources = [corpus, *map(Path, mix_in)] if mix_in else corpus
    fingerprint = corpus_fingerprint(sources)
    return TrainingRun(corpus, folder, rt, log, mix_in, sources, fingerprint, plan(folder, fingerprint, fresh))


def choose_settings(run: TrainingRun, preset: str | None, model_overrides: dict | None,
                    train_overrides: dict | None, vocab_size: int, fresh: bool, device: str | None) -> None:
    """A new model's preset and tokenizer, or the settings the folder was trained with; then the
    tokenizer, and a vocabulary that fits it."""
    rt, folder, log = run.rt, run.folder, run.log
    if run.action == "new":
        preset = preset or default_preset_name(pick_device(device))
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        run.preset = preset
        run.model_cfg = override(PRESETS[preset].model, **(model_overrides or {}))
        run.tcfg = override(PRESETS[preset].train, **(train_overrides or {}))
        run.corpora = []
        if rt.is_main:
            if fresh:
                clear_for_fresh_start(folder, log)
            folder.root.mkdir(parents=True, exist_ok=True)
            log(f"training a byte-level BPE tokenizer ({vocab_size} tokens) on {run.corpus} ...")
            begun = time.time()   # (said, since a --time budget pays for it)
            Tokenizer.train(iter_texts_for_tokenizer(run.sources), vocab_size=vocab_size).save(folder.tokenizer)
            log(f"tokenizer: {time.time() - begun:.1f} s")
    else:
        saved = checkpoint.load_config(folder)
        run.preset, run.model_cfg, run.corpora = saved["preset"], saved["model"], saved["corpora"]
        run.tcfg = override(saved["train"], **(train_overrides or {}))
    rt.barrier()
    run.tokenizer = Tokenizer.load(folder.tokenizer)
    padded = -(-run.tokenizer.vocab_size // 64) * 64   # a multiple of 64 runs faster
    run.model_cfg = replace(run.model_cfg, vocab_size=padded)


def prepare_data(run: TrainingRun) -> None:
    """The corpus's token shards, made once per corpus and tokenizer (by the first process)."""
    run.data_dir = run.folder.data / run.fingerprint
    if run.rt.is_main and not prepared_with(run.data_dir, run.tokenizer, run.tcfg.bpe_dropout):
        dropout = f" (also with BPE dropout {run.tcfg.bpe_dropout:g})" if run.tcfg.bpe_dropout else ""
        run.log(f"tokenizing {run.corpus}{dropout} ...")
        begun = time.time()   # (said, since a --time budget pays for it)
        report_corpus(prepare_corpus(run.sources, run.tokenizer, run.data_dir, block_size=run.model_cfg.block_size,
                                     bpe_dropout=run.tcfg.bpe_dropout), run.log)
        run.log(f"data: {time.time() - begun:.1f} s to tokenize and prepare the corpus")
    run.rt.barrier()
    run.train_shards, run.val_shards = TokenShards(run.data_dir, "train"), TokenShards(run.data_dir, "val")


def save_settings(run: TrainingRun) -> None:
    """This corpus joins the list of those the model trained on (last), and the settings as they will
    run are written to the folder's config."""
    if run.action != "resume":
        run.corpora = [c for c in run.corpora if c["fingerprint"] != run.fingerprint]
        run.corpora.append({"path": str(run.corpus.resolve()), "fingerprint": run.fingerprint,
                            "data": f"data/{run.fingerprint}", "tokens": run.train_shards.tokens_per_pass,
                            **({"mixed_in": list(map(str, run.mix_in))} if run.mix_in else {})})
    if run.tcfg.low_memory:
        run.tcfg = replace(run.tcfg, grad_accum=1)
        if run.rt.world_size > 1:
            raise UserError("--low-memory steps the optimizer inside backward, which one process only can do")
    if run.rt.is_main:
        checkpoint.save_config(run.folder, run.model_cfg, run.tcfg, run.preset, run.corpora)


def build_model(run: TrainingRun) -> None:
    """The model and its optimizer: new, as the interrupted run left them, or the trained weights."""
    torch.manual_seed(run.tcfg.seed)   # the same initial weights on every process and every run
    run.model = GPT(run.model_cfg).to(run.rt.device)
    run.optimizer = build_optimizer(run.model, run.tcfg, run.rt.device_type)
    if run.action == "resume":
        run.progress = checkpoint.load_train_state(run.folder, run.model, run.optimizer)
        run.best_weights = checkpoint.load_best_weights(run.folder)
        run.log(f"resuming from step {run.progress['step']}")
    elif run.action == "continue":
        weights, _ = checkpoint.load_model(run.folder)
        run.model.load_state_dict(weights.state_dict())
        run.log(f"continuing {run.folder.root} (trained on {', '.join(Path(c['path']).name for c in run.corpora[:-1])})"
                f" on {run.corpus}")


def schedule(run: TrainingRun, steps: int | None, time_budget: float | None,
             time_fit: Callable[[float, tuple[int, str] | None], TimeFit]) -> None:
    """How long the run is: the schedule of the run being resumed (a --time run's fitted one too), or
    the steps asked for, or a length that suits the corpus; with a time budget not fitted yet, the
    TimeFit that fits the length to it as the run goes (under --steps, or max_epochs passes)."""
    tcfg, rt = run.tcfg, run.rt
    micro_per_rank = tcfg.grad_accum // rt.world_size
    if micro_per_rank * rt.world_size != tcfg.grad_accum:
        raise UserError(f"gradient accumulation {tcfg.grad_accum} is not divisible by {rt.world_size} processes")
    if "schedule" in run.progress:   # a resumed run keeps its schedule
        run.schedule = Schedule(**run.progress["schedule"])
    else:   # (a folder from before schedules were saved recorded its total_steps alone)
        run.schedule = Schedule.planned(steps or run.progress.get("total_steps") or default_steps(
            run.train_shards.tokens_per_pass, run.model.num_params(), run.tokens_per_step, tcfg), tcfg)
    time_budget = time_budget or run.progress.get("time_budget_s")
    run.fit = time_fit(time_budget, time_cap(run, steps)) if time_budget and not run.schedule.fitted else None
    run.progress.update(corpus=run.fingerprint, schedule=asdict(run.schedule), time_budget_s=time_budget,
                        finished=False)


def time_cap(run: TrainingRun, steps: int | None) -> tuple[int, str]:
    """The most steps a --time run takes however many fit, and why: --steps, or else max_epochs passes over
    the corpus (more than that learns a small corpus by heart, and the held-out text gets worse)."""
    if steps:
        return steps, f"--steps {steps} is fewer"
    passes = max(1, max_epochs_steps(run.train_shards.tokens_per_pass, run.tokens_per_step, run.tcfg))
    return passes, f"{run.tcfg.max_epochs:g} passes over the corpus are {passes} steps"


def score_previous_corpora(run: TrainingRun) -> tuple[list[dict], dict]:
    """Book training: the corpora trained on before, and the model's validation on each before this
    one, to say afterwards how much of them it forgot."""
    previous = [c for c in run.corpora[:-1] if (run.folder.root / c["data"] / "meta.json").exists()]
    if run.action != "continue" or not run.rt.is_main:
        return previous, {}
    return previous, {c["path"]: evaluate(run.model, TokenShards(run.folder.root / c["data"], "val"), run.rt,
                                          run.tcfg.micro_batch, run.tcfg.eval_tokens) for c in previous}


def announce(run: TrainingRun) -> dict:
    """Say what is about to train, on what and where; the run's software, as run_info records it."""
    rt, log = run.rt, run.log
    info = run_info(rt)
    corpus = CorpusInfo.load(run.data_dir)
    spellings = f", each in {corpus.segmentations} segmentations" if corpus.segmentations > 1 else ""
    length = (f"steps of {format_count(run.tokens_per_step)} tokens, as many as fit in --time "
              f"{format_eta(run.fit.budget)}" if run.fit
              else f"{run.schedule.total_steps} steps of {format_count(run.tokens_per_step)} tokens")
    log(f"training {format_count(run.model.num_params())} params on {format_count(corpus.train.documents)} documents "
        f"({format_count(run.train_shards.tokens_per_pass)} tokens{spellings}) | preset {run.preset} | {rt.device}"
        f"{f' x{rt.world_size}' if rt.world_size > 1 else ''} | {length}")
    log(f"nimllm {info['nimllm']} (commit {info['git_commit'] or 'unknown'}) | python {info['python']} | "
        f"torch {info['torch']}{' | ' + info['gpu'] if info['gpu'] else ''} | config and log in {run.folder.metrics}")
    return info


def open_metrics(run: TrainingRun, info: dict) -> MetricsLog | None:
    """The first process's metrics log, begun with a record of the run's settings and software."""
    if not run.rt.is_main:
        return None
    metrics = MetricsLog(run.folder.metrics, run.progress["step"] if run.action == "resume" else None)
    metrics.write(event="start", step=run.progress["step"], action=run.action, corpus=str(run.corpus),
                  preset=run.preset, model=asdict(run.model_cfg), train=asdict(run.tcfg),
                  total_steps=run.schedule.total_steps, run=info)
    return metrics


def report_forgetting(run: TrainingRun, previous: list[dict], before: dict, summary: dict) -> None:
    """The validation of each earlier corpus before and after this one: what book training forgot."""
    summary["forgetting"] = {}
    for c in previous:
        after = evaluate(run.model, TokenShards(run.folder.root / c["data"], "val"), run.rt, run.tcfg.micro_batch,
                         run.tcfg.eval_tokens)
        summary["forgetting"][c["path"]] = {"before": before[c["path"]], "after": after}
        run.log(f"previous corpus {Path(c['path']).name}: validation {before[c['path']]['bpb']:.3f} -> "
                f"{after['bpb']:.3f} bits per byte ({after['bpb'] - before[c['path']]['bpb']:+.3f} forgotten)")


# ---- the loop ----------------------------------------------------------------------------------

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


def check_replicas_in_sync(model: GPT, log) -> None:
    """DDP keeps every process's weights identical; compare per-tensor checksums to be sure."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("the training processes' weights diverged")
    log(f"replicas in sync: {len(sums)} tensors identical on {len(gathered)} processes")


def save_checkpoint(folder: ModelFolder, model: GPT, optimizer, progress: dict, rt: Runtime,
                    best: dict | None = None) -> None:
    """The training state (with `best`, the weights of the lowest validation, where they are not the
    model's own), the model's weights and the loss plot."""
    if rt.is_main:
        at_best = progress.get("best", {}).get("step") == progress["step"]
        checkpoint.save_train_state(folder, model, optimizer, progress, None if at_best else best)
        checkpoint.save_weights(folder, model, progress["step"])
        plot_losses(folder.metrics, folder.loss_plot, title=str(folder.root.name))


def model_for_training(model: GPT, tcfg: TrainConfig, rt: Runtime):
    """The model as the loop calls it: compiled on CUDA if asked, wrapped in DDP under torchrun."""
    model.activation_checkpointing = tcfg.activation_checkpointing or tcfg.low_memory
    if tcfg.compile and rt.device_type == "cuda":
        if tcfg.low_memory:   # block by block, so each block's gradients arrive (and go) on their own
            for block in model.blocks:
                block.compile()
        else:
            model = torch.compile(model)
    if rt.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[rt.device] if rt.device_type == "cuda" else None)
    return model


def train_step(run: TrainingRun, model, step: int, lr: float) -> tuple[torch.Tensor, float | None]:
    """One optimizer step at learning rate lr, its grad_accum micro-batches shared out among the
    processes; this process's loss and the gradient norm before clipping."""
    tcfg, rt, raw_model, optimizer = run.tcfg, run.rt, run.model, run.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(tcfg.seed * 1_000_003 + step * 64 + rt.rank)   # dropout masks
    micro_per_rank = tcfg.grad_accum // rt.world_size
    loss_sum = torch.zeros((), device=rt.device)
    for i in range(micro_per_rank):
        x, y = run.train_shards.get_batch(tcfg.micro_batch, raw_model.cfg.block_size,
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
    return loss_sum, grad_norm


def log_step(run: TrainingRun, metrics, loss: float, lr: float, grad_norm: float | None, rate: float) -> None:
    """The progress line, and the metrics record, of the step just taken at `rate` steps a second."""
    step, total, elapsed = run.progress["step"], run.schedule.total_steps, run.progress["elapsed_s"]
    remaining = (total - step) / rate   # (a --time run's total is refitted each step: this is its eta too)
    run.log(f"step {step} / {total} | loss {loss:.4f} | {rate:.2f} opt/s | "
            f"{format_count(rate * run.tokens_per_step)} tok/s | lr {lr:.2e} | eta {format_eta(remaining)}")
    if metrics:
        metrics.write(step=step, loss=loss, lr=lr, grad_norm=grad_norm, opt_per_s=rate,
                      tokens_per_s=rate * run.tokens_per_step, elapsed_s=elapsed)


PILOT_SKIPPED = 2   # a process's first steps compile and warm kernels up: their time says nothing of the rest
PILOT_TIMED = 3     # the steps whose throughput a --time run is first fitted to


class TimeFit:
    """Fits a --time run's length to the wall clock. After the pilot (PILOT_SKIPPED + PILOT_TIMED steps)
    it measures what the end of the run costs and fixes the steps that fit before it; after every later
    step it fits again with the throughput measured so far, so that the run ends on time even when the
    machine slows down, and the schedule (see Schedule.replanned) still ends at its final learning rate."""

    def __init__(self, budget: float, cap: tuple[int, str] | None, started: float,
                 after_training: Callable[[GPT], float] | None, to_exit: bool):
        self.budget, self.cap, self.started = budget, cap, started   # cap: (steps, why) the run stays under
        self.after_training, self.to_exit = after_training, to_exit
        self.first_step, self.setup_s = 0, 0.0   # where this process's steps begin, and the seconds before them
        self.timed_from: tuple[int, float] | None = None   # (step, elapsed) where the timed steps begin
        self.finishing_s = 0.0   # the final validation and checkpoint, and what follows training

    def begin(self, step: int, elapsed: float) -> None:
        self.first_step, self.setup_s = step, time.time() - self.started
        self.previous = (step, elapsed)   # the step before the one refit is called after, and its clock

    def rate(self, step: int, elapsed: float) -> float:
        """Optimizer steps per second since the pilot, the periodic validations and checkpoints included
        (they recur)."""
        timed_step, timed_elapsed = self.timed_from
        return (step - timed_step) / max(elapsed - timed_elapsed, 1e-9)

    def pilot_goes_on(self, step: int, elapsed: float, since_started: float) -> bool:
        """Whether the pilot runs another step. A budget too short for the whole pilot ends it early: once
        it is spent, or once the pilot's remaining steps, each as long as the last (from the second on: the
        first may have compiled), would not fit in what is left of it."""
        done = step - self.first_step
        if done >= PILOT_SKIPPED + PILOT_TIMED or since_started >= self.budget:
            return False
        last_step_s = elapsed - self.previous[1]
        return done < 2 or since_started + (PILOT_SKIPPED + PILOT_TIMED - done) * last_step_s < self.budget

    def measure_finishing(self, run: TrainingRun) -> float:
        """Seconds the end of the run will take: its validation, timed on one batch; its checkpoint, timed by
        saving one now (a resume can start from it; pyplot is imported first, as the last save will find
        it); the caller's after_training estimate; and the process's exit when the budget runs to it."""
        tcfg, rt, model = run.tcfg, run.rt, run.model
        batch_tokens = tcfg.micro_batch * model.cfg.block_size
        batch = timed(lambda: evaluate(model, run.val_shards, rt, tcfg.micro_batch, batch_tokens), rt.device)
        validation = batch * math.ceil(min(tcfg.eval_tokens, run.val_shards.num_tokens) / batch_tokens)
        pyplot()
        begun = time.time()
        save_checkpoint(run.folder, model, run.optimizer, run.progress, rt)
        saving = time.time() - begun
        after = self.after_training(model) if self.after_training else 0.0
        return validation + saving + after + (exit_seconds() if self.to_exit else 0.0)

    def refit(self, run: TrainingRun, step: int, elapsed: float, since_started: float) -> Schedule:
        """The run's schedule fitted to the time left after `step` (steps done); unchanged during the
        pilot. The end of the run is measured once, by the first process, when the pilot ends."""
        previous, self.previous = self.previous, (step, elapsed)
        if step - self.first_step == PILOT_SKIPPED:
            self.timed_from = (step, elapsed)
        if not run.schedule.fitted and self.pilot_goes_on(step, elapsed, since_started):
            return run.schedule
        if step - self.first_step <= PILOT_SKIPPED:   # the pilot cut short: the last step is all that was timed
            self.timed_from = previous
        rate = self.rate(step, elapsed)
        if not run.schedule.fitted:
            begun = time.time()
            finishing = self.measure_finishing(run) if run.rt.is_main else 0.0
            self.finishing_s, paused = agree_max([finishing, time.time() - begun], run.rt)
            since_started += paused
            self.timed_from = (self.timed_from[0], self.timed_from[1] + paused)   # (a one-off: not in the rate)
        left = self.budget - since_started - self.finishing_s
        fits = step + max(1, round(left * rate))   # at least one more step: the one at the final lr
        total = min(fits, self.cap[0]) if self.cap else fits
        schedule = run.schedule
        fitted = replace(schedule.replanned(step, total, run.tcfg) if total != schedule.total_steps else schedule,
                         fitted=True)
        if not schedule.fitted:
            run.log(self.plan_line(fitted, fits, rate))
        return fitted

    def plan_line(self, schedule: Schedule, fits: int, rate: float) -> str:
        plan = (f"--time {format_eta(self.budget)}: {fits} steps fit (warm-up {schedule.warmup}, measured "
                f"{rate:.2f} opt/s; {self.setup_s:.1f} s before the first step, {self.finishing_s:.1f} s kept "
                f"for the last validation, save and what follows)")
        if schedule.total_steps < fits:
            plan += f"; {self.cap[1]}, so {schedule.total_steps} steps"
        return plan


def remember_if_best(run: TrainingRun, step: int, val: dict) -> None:
    """Keep a CPU copy of the weights at the lowest validation so far. A small text read many times is
    learned by heart: its validation falls, then rises (nanoGPT's recipe keeps its best checkpoint too)."""
    best = run.progress.get("best")
    if best is None or val["bpb"] < best["val_bpb"]:
        run.progress["best"] = {"step": step, "val_loss": val["loss"], "val_bpb": val["bpb"]}
        run.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}


def end_at_best(run: TrainingRun, step: int, val: dict | None, metrics) -> bool:
    """A finished run whose last validation is not its lowest takes the weights of the lowest; whether
    it did."""
    best = run.progress.get("best")
    if not best or best["step"] == step or run.best_weights is None:
        return False
    run.model.load_state_dict(run.best_weights)
    run.progress["kept_best"] = best["step"]
    run.log(f"kept the weights of step {best['step']}, the lowest validation: {best['val_bpb']:.4f} bits per byte"
            f" against {val['bpb']:.4f} at the end (--no-keep-best keeps the last)")
    if metrics:
        metrics.write(event="kept_best", step=step, best_step=best["step"], best_val_bpb=best["val_bpb"])
    return True


def agree_max(values: list[float], rt: Runtime) -> list[float]:
    """The largest of each value over all processes, so that they all decide alike (in float64, so that a
    long run's clocks keep their milliseconds). One process has nothing to agree with."""
    if rt.world_size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def train_loop(run: TrainingRun, metrics) -> dict:
    """Optimizer steps until the schedule is done or Ctrl-C asks to stop, with the log, validation
    and checkpoints on the way; a --time run refits its schedule after every step."""
    tcfg, rt, progress, fit = run.tcfg, run.rt, run.progress, run.fit
    if tcfg.fp8:
        use_fp8(run.model.blocks, torch.device(rt.device), run.log)
    model = model_for_training(run.model, tcfg, rt)
    step, elapsed = progress["step"], progress["elapsed_s"]
    run_start, elapsed_at_start = time.time(), elapsed
    last_ckpt, last_log, last_log_step = run_start, run_start, step
    progress["finished"] = step >= run.schedule.total_steps
    if fit:
        fit.begin(step, elapsed)
    stopping, val = False, None
    if progress["finished"]:   # resumed a run whose last checkpoint came at its very end
        save_checkpoint(run.folder, run.model, run.optimizer, progress, rt)
    model.train()
    with StopRequest() as stop:
        while not (progress["finished"] or stopping):
            lr = run.schedule.lr(step, tcfg)
            loss_sum, grad_norm = train_step(run, model, step, lr)
            step += 1

            # all processes agree on whether to stop and on the clocks, so they stay in lockstep
            now = time.time()
            requested, elapsed, since_started = agree_max(
                [float(stop.requested), elapsed_at_start + now - run_start, now - fit.started if fit else 0.0], rt)
            stopping = bool(requested)
            if rt.world_size > 1:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            progress.update(step=step, elapsed_s=elapsed)
            if fit and step < run.schedule.total_steps:
                run.schedule = fit.refit(run, step, elapsed, since_started)
            progress.update(schedule=asdict(run.schedule), finished=step >= run.schedule.total_steps)

            if step % tcfg.log_interval == 0 or progress["finished"]:
                now = time.time()
                rate = (step - last_log_step) / max(now - last_log, 1e-9)
                log_step(run, metrics, loss_sum.item(), lr, grad_norm, rate)
                last_log, last_log_step = now, step
            if rt.is_main and (step % tcfg.eval_interval == 0 or progress["finished"]):
                val = evaluate(run.model, run.val_shards, rt, tcfg.micro_batch, tcfg.eval_tokens)
                run.log(f"step {step} | validation loss {val['loss']:.4f} | {val['bpb']:.4f} bits per byte")
                metrics.write(step=step, val_loss=val["loss"], val_bpb=val["bpb"])
                if tcfg.keep_best:
                    remember_if_best(run, step, val)
            if progress["finished"] or stopping or time.time() - last_ckpt > tcfg.checkpoint_minutes * 60:
                save_checkpoint(run.folder, run.model, run.optimizer, progress, rt, run.best_weights)
                last_ckpt = time.time()
    if rt.world_size > 1:
        check_replicas_in_sync(run.model, run.log)
    if rt.is_main and tcfg.keep_best and progress["finished"] and not stopping and end_at_best(run, step, val, metrics):
        save_checkpoint(run.folder, run.model, run.optimizer, progress, rt)
        val = {"loss": progress["best"]["val_loss"], "bpb": progress["best"]["val_bpb"]}
    if stopping:
        run.log(f"stopped at step {step}; the checkpoint is saved: run the same command again to resume")
    return {"interrupted": stopping and not progress["finished"], "step": step, "val": val}
