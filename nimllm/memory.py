"""Memory in the weights: the live model of a folder, which retrains itself after each conversation.

`Memory.learn` turns a conversation into lessons (nimllm/lessons.py: the questions the user may ask
later, answered, each trained alone), rehearses the lessons of a few earlier conversations and
replays a few windows of the base training text beside them, and takes a selective update
(nimllm/update.py: top-1% mask, EWC, stop once learned). The control set (nimllm/control.py) then
checks that the model's answers to unrelated prompts stayed as they were: an update that changes
them is halved, twice, and else not kept. What is kept is stored as a sparse delta
(nimllm/deltas.py). A fact said in many conversations is rehearsed often and stays; a one-off is
drawn less and less often and fades.

Opening a Memory loads the weights and nothing else: the Fisher and the control set wait for the
first update, the decoder for the first message (a chat's prompt comes first).

`run_memory` is `nimllm memory`: what was learned, listed, shown, counted or forgotten.
"""
from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from nimllm import checkpoint
from nimllm.background import Background
from nimllm.config import MemoryConfig, ModelFolder, UserError, memory_config
from nimllm.control import (AGENT_PROMPTS, CHAT_PROMPTS, answers_kept, control_batch, load_control, make_control,
                            save_control)
from nimllm.control import MAX_TOKENS as CONTROL_MAX_TOKENS
from nimllm.data import TokenShards
from nimllm.console import printable
from nimllm.deltas import (apply_delta, learning_lock, load_delta, load_remembered, memory_history, memory_stats,
                           save_delta, show_memory)
from nimllm.deltas import forget as forget_deltas
from nimllm.fileio import atomic_write, remove_stale_temps
from nimllm.generate import Decoder, fastest_decoder
from nimllm.lessons import Lesson, batch, is_agent_task, lessons_for, training_windows
from nimllm.model import GPT
from nimllm.runtime import pick_device, timed
from nimllm.store import Store
from nimllm.tokenizer import Tokenizer
from nimllm.update import UpdateReport, fisher_diagonal, scaled, selective_update

AGENT_KINDS = ("agent",)   # the memories the agent carries (Memory's kinds)
CONTROL_SCALES = (1.0, 0.5, 0.25)   # what the control check tries before it keeps nothing
OUT_OF_GPU_MEMORY = ("the GPU ran out of memory while learning (other programs may hold it): the weights are as "
                     "they were, and the next chat learns this conversation")


class Memory:
    """A model folder's model with everything it has learned from conversations, its tokenizer and
    its conversation store; `learn` and `forget` change the weights and keep the folder in step.

    kinds: the kinds of conversation whose memories the model carries and learns; None, all of them.
    The agent passes ("agent",): what chats teach (facts, talk) never moves the weights that plan its
    commands, so no chat can lose it a task; chat and serve carry everything, the agent's lessons too."""

    def __init__(self, folder: ModelFolder, device: str | None = None, mcfg: MemoryConfig | None = None,
                 kinds: tuple[str, ...] | None = None):
        self.folder, self.kinds = folder, kinds
        self.device = pick_device(device)
        remove_stale_temps(folder.root)   # what killed writes left, quietly: the chat's screen is for the talk
        self.model, self.config = checkpoint.load_model(folder, self.device)
        self.mcfg = mcfg or memory_config(self.config.get("preset"))
        self.tokenizer = Tokenizer.load(folder.tokenizer)
        folder.memory.mkdir(parents=True, exist_ok=True)
        self.store = Store(folder.store)
        self.anchor = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self._fisher: dict[str, torch.Tensor] | None = None
        self._control: dict | None = None
        self.applied: list[int] = []
        self._catch_up()
        self._decoder: tuple[tuple, Decoder] | None = None
        self._warming: Background | None = None

    def decoder(self, batch_size: int = 1, compile: bool = False) -> Decoder:
        """The fastest decoder of the weights as they are now, for batch_size sequences (compiled on a
        GPU if asked): built again once memories change them."""
        key = (tuple(self.applied), batch_size, compile)
        if self._decoder is None or self._decoder[0] != key:
            self._decoder = None   # free the old copy of the weights first
            self._decoder = (key, fastest_decoder(self.model, batch_size, compile))
        return self._decoder[1]

    @property
    def needs_warm_up(self) -> bool:
        """Whether a warm-up shortens the first update: on a GPU. On a CPU a dry update costs as much as a
        real one."""
        return self.device.startswith("cuda")

    def warm_up_in_background(self) -> None:
        """Where it `needs_warm_up`, the warm-up on another thread, once: the chat starts it when a
        message states something, so that a chat of questions never pays it (9 GB of GPU memory), and
        whatever changes the weights (`learn`, `forget`) waits for it first."""
        if self._warming is None and self.needs_warm_up:
            self._warming = Background(self.warm_up)

    def wait_for_warm_up(self) -> None:
        if self._warming is not None:
            self._warming.result()

    def warm_up(self) -> bool:
        """The whole update once, dry: the control answers as lessons, at a learning rate of 0 (Adam then
        moves nothing, and the weights stay as they are) and never "learned", so that both kinds of step
        run. What a GPU loads or builds at first use (libraries, kernels, attention plans at the replay's
        shape), the Fisher and the control set then cost the user's typing time, not the first update's.
        The chat calls it where it `needs_warm_up`. False when the GPU had no room for it (other
        processes hold its memory): nothing changed, nothing is lost."""
        x, y = control_batch(self.control, self.device)
        extra, keep, _ = self._rehearsal([])
        dry = replace(self.mcfg, lr=0.0, steps=2, learned_loss=-1.0)
        try:
            selective_update(self.model, x, y, self.anchor, self.fisher, dry, extra, keep)
        except torch.OutOfMemoryError:   # only a head start: where it does not fit now, the first update pays
            self._free_gpu_memory()
            return False
        return True

    def _free_gpu_memory(self) -> None:
        self.model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()

    # ---- what the first update needs, made once on the base model and kept in the folder ----

    @property
    def fisher(self) -> dict[str, torch.Tensor]:
        """Made by `prepare` when training ends; estimated here for a folder trained without it."""
        if self._fisher is None:
            path = fisher_path(self.folder)
            if not path.exists():
                prepare(self.folder, self.device, self.mcfg, control=False, log=lambda *_: None)
            self._fisher = {n: t.to(self.device) for n, t in load_file(str(path)).items()}
        return self._fisher

    @property
    def control(self) -> dict:
        if self._control is None:
            self._control = load_control(self.folder.control)
            if self._control is None:
                prepare(self.folder, self.device, self.mcfg, fisher=False, log=lambda *_: None)
                self._control = load_control(self.folder.control)
        return self._control

    def control_kept(self) -> list[bool]:
        return answers_kept(self.model, self.control)

    # ---- the weights follow the folder ----

    def _catch_up(self) -> None:
        """Add the deltas this process has not added yet (another chat may have learned something)."""
        active = self.store.deltas(kinds=self.kinds)
        if [d.id for d in active[:len(self.applied)]] != self.applied:   # one was forgotten: rebuild
            self._rebuild()
            return
        for d in active[len(self.applied):]:
            if d.n_weights:
                apply_delta(self.model, load_delta(self.folder.root / d.file))
            self.applied.append(d.id)

    def _rebuild(self) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(self.anchor[n])
        self.applied = []
        self._catch_up()

    @contextmanager
    def _lock(self):
        with learning_lock(self.folder):
            self._catch_up()   # what other processes learned while we waited
            yield

    # ---- learning ----

    def _base_windows(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n windows of the base model's latest training corpus, the same ones for the same seed."""
        return base_windows(self.folder, self.config, n, seed)

    def _rehearsal(self, learning: list[int]) -> tuple[list, list, list[int]]:
        """What each update rehearses beside the new lessons: a few windows of the base training text
        (which the update should not unlearn), and the answers it should keep: the lessons of a few
        earlier conversations still remembered (a fact said in many conversations is rehearsed often
        and stays, a one-off fades as the others crowd it out) and the control answers. Drawn by the
        memory's place in line, so relearning repeats the draw exactly."""
        rng = random.Random(len(self.applied))
        remembered = {d.id for d in self.store.deltas(kinds=self.kinds)}
        earlier = [c.id for c in self.store.conversations()
                   if c.learned_delta in remembered and c.id not in learning]
        chosen = sorted(rng.sample(earlier, min(self.mcfg.rehearse_conversations, len(earlier))))
        extra, keep = [], []
        if self.mcfg.replay_sequences:
            extra.append(tuple(t.to(self.device) for t in
                               self._base_windows(self.mcfg.replay_sequences, seed=1 + len(self.applied))))
        lessons = [lesson for cid in chosen for lesson in lessons_for(self.store.messages(cid))]
        if lessons:
            keep.append(batch(training_windows(self.tokenizer, lessons, self.model.cfg.block_size), self.device))
        if self.mcfg.rehearse_control:
            keep.append(control_batch(self.control, self.device))
        if not self.mcfg.keep_answers:
            extra, keep = extra + keep, []
        return extra, keep, chosen

    def lessons(self, conversation_ids: list[int]) -> list[Lesson]:
        return [lesson for cid in conversation_ids for lesson in lessons_for(self.store.messages(cid))]

    def learn(self, conversation_ids: list[int], log=print) -> UpdateReport | None:
        """Retrain on what these conversations teach and record the change as one delta; None when
        they teach nothing (only questions, say)."""
        lessons = self.lessons(conversation_ids)
        if not lessons:
            return None
        task = any(is_agent_task(self.store.messages(cid)) for cid in conversation_ids)
        mcfg = replace(self.mcfg, lr=self.mcfg.agent_lr) if task else self.mcfg
        waited = time.time()
        self.wait_for_warm_up()   # not the update's time: it is reported beside it
        start = mark = time.time()
        timings = {"wait for the warm-up": round(start - waited, 3)}

        def timed(stage: str) -> None:   # every stage ends in a value read back, so the GPU is done too
            nonlocal mark
            timings[stage], mark = round(time.time() - mark, 3), time.time()

        control, fisher = self.control, self.fisher   # made before the lock, on the base model if missing
        timed("load the Fisher and control set")
        with self._lock():
            saved = {n: p.detach().clone() for n, p in self.model.named_parameters()}
            try:
                delta, report = self._update(lessons, conversation_ids, mcfg, saved, control, fisher, timed)
            except torch.OutOfMemoryError:   # a chat beside other GPU work: say so, keep the model as it was
                with torch.no_grad():
                    for n, p in self.model.named_parameters():
                        p.copy_(saved[n])
                self._free_gpu_memory()
                raise UserError(OUT_OF_GPU_MEMORY) from None
            name = f"memory/delta-{time.time_ns()}-{os.getpid()}.safetensors"
            save_delta(self.folder.root / name, delta)
            timed("save")
            report.seconds, report.timings = time.time() - start, timings
            report.delta_id = self.store.record_delta(conversation_ids, name, report.n_weights, report.seconds,
                                                      report.stats())
            self.applied.append(report.delta_id)
        log(str(report))
        return report

    def _update(self, lessons: list[Lesson], conversation_ids: list[int], mcfg: MemoryConfig, saved: dict,
                control: dict, fisher: dict, timed):
        """The selective update on these lessons beside the rehearsal, as far as the control check
        keeps it: (delta, report)."""
        x, y = batch(training_windows(self.tokenizer, lessons, self.model.cfg.block_size), self.device)
        extra, keep, rehearsed = self._rehearsal(conversation_ids)
        kept_before = answers_kept(self.model, control)
        timed("prepare")
        delta, report = selective_update(self.model, x, y, self.anchor, fisher, mcfg, extra, keep)
        report.lessons, report.rehearsed = len(lessons), rehearsed
        timed("steps")
        delta, report.scale, kept_after = self._checked(delta, saved, kept_before, control)
        report.control = (sum(kept_after), len(kept_after))
        if report.scale < 1:
            report.n_weights = sum(len(i) for i, _ in delta.values())
            with torch.no_grad():
                report.loss_after = self.model(x, y).item()
        timed("check")
        return delta, report

    def _checked(self, delta, saved: dict, kept_before: list[bool], control: dict):
        """The delta as far as the control answers allow: whole, halved or quartered, or nothing, so
        that it changes at most mcfg.control_share of the answers the model still gave as stored. The
        model ends at saved + the kept delta, added as a reload adds it."""
        params = dict(self.model.named_parameters())
        for scale in CONTROL_SCALES:
            if scale < 1:
                with torch.no_grad():
                    for n, (idx, _) in delta.items():
                        params[n].view(-1)[idx.to(self.device)] = saved[n].view(-1)[idx.to(self.device)]
                apply_delta(self.model, scaled(delta, scale))
            kept_after = answers_kept(self.model, control)
            changed = sum(b and not a for b, a in zip(kept_before, kept_after))
            if changed <= self.mcfg.control_share * len(kept_after) or not delta:
                return (scaled(delta, scale) if scale < 1 else delta), scale, kept_after
        with torch.no_grad():
            for n, (idx, _) in delta.items():
                params[n].view(-1)[idx.to(self.device)] = saved[n].view(-1)[idx.to(self.device)]
        return {}, 0.0, kept_before

    def learn_pending(self, log=print) -> list[UpdateReport]:
        """Conversations a killed chat left unlearned, claimed (no other process learns them too) and learned
        one by one."""
        reports = []
        for cid in self.store.claim_unlearned(self.kinds):
            if not self.lessons([cid]):
                continue   # only questions, or an agent's task the user did not approve: nothing to learn
            log(f"remembering an earlier conversation ({cid})...")
            report = self.learn([cid], log)
            if report:
                reports.append(report)
        return reports

    def forget(self, delta_id: int | None = None) -> list[int]:
        """Forget one memory, or all of them; the weights become base + the remaining deltas."""
        self.wait_for_warm_up()
        forgotten = forget_deltas(self.folder, self.store, delta_id)
        self._rebuild()
        return forgotten

    def stats(self) -> dict:
        return memory_stats(self.folder, self.store, self.control_kept())


def fisher_path(folder: ModelFolder) -> Path:
    return folder.memory / "fisher.safetensors"


def base_windows(folder: ModelFolder, config: dict, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    shards = TokenShards(folder.root / config["corpora"][-1]["data"], "train")
    return shards.get_batch(n, config["model"].block_size, torch.Generator().manual_seed(seed))


def prepare(folder: ModelFolder, device: str | torch.device | None, mcfg: MemoryConfig | None = None,
            fisher: bool = True, control: bool = True, log=print) -> None:
    """What memory needs of the base model, made once when training ends so that a chat's first update
    does not wait for it: the diagonal Fisher on the base training text, and the control set. Under
    torchrun the first process makes them."""
    if os.environ.get("RANK", "0") != "0":
        return
    start, mcfg = time.time(), mcfg or MemoryConfig()
    base, config = checkpoint.load_model(folder, pick_device(device))
    device = next(base.parameters()).device
    if fisher:
        x, y = base_windows(folder, config, mcfg.fisher_sequences, seed=0)
        sequences = [torch.cat([xi, yi[-1:]]).to(device) for xi, yi in zip(x, y)]
        folder.memory.mkdir(parents=True, exist_ok=True)
        atomic_write(fisher_path(folder), save({n: f.cpu() for n, f in fisher_diagonal(base, sequences).items()}))
    if control:
        save_control(folder.control, make_control(base, Tokenizer.load(folder.tokenizer)))
    log(f"memory: {'the Fisher diagonal and ' if fisher else ''}{'the control set ' if control else ''}"
        f"made in {time.time() - start:.1f} s")


def estimated_prepare_seconds(model: GPT, mcfg: MemoryConfig | None = None) -> float:
    """About how long `prepare` will take for this model, from one Fisher sequence's forward and backward and
    one short forward (a control prompt's) timed, times how many of each it runs: what a --time run keeps
    for it at its end. The gradients come from autograd.grad: nothing lands in .grad, no hook steps."""
    mcfg = mcfg or MemoryConfig()
    device = next(model.parameters()).device
    sequence = torch.zeros(1, model.cfg.block_size, dtype=torch.long, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    fisher_sequence = timed(lambda: torch.autograd.grad(model(sequence, sequence), params), device)
    with torch.no_grad():
        control_forward = timed(lambda: model(sequence[:, :32]), device)   # a prompt and its answer
    model.train(was_training)
    prompts = len(CHAT_PROMPTS) + len(AGENT_PROMPTS)   # decoded together, then each checked alone twice
    return mcfg.fisher_sequences * fisher_sequence + (CONTROL_MAX_TOKENS + 2 * prompts) * control_forward


def folder_stats(folder: ModelFolder, store: Store) -> dict:
    """`nimllm memory stats`: the totals, and how many control answers the remembered model still gives."""
    control = load_control(folder.control)
    kept = answers_kept(load_remembered(folder)[0], control) if control else None
    return memory_stats(folder, store, kept)


def run_memory(folder: ModelFolder, action: str, delta_id: int | None) -> int:
    """`nimllm memory list | show ID | forget ID | reset | stats`, shown on the terminal; returns the exit code."""
    from rich.console import Console
    from rich.table import Table
    checkpoint.load_config(folder)   # a clear error when there is no model
    if action in ("show", "forget") and delta_id is None:
        raise UserError(f"`nimllm memory {action}` needs a memory id; `nimllm memory list` shows them")
    console = Console()
    with Store(folder.store) as store:
        if action == "list":
            rows = memory_history(folder, store)
            table = Table("id", "when", "weights", "seconds", "conversations", "forgotten")
            for r in rows:
                table.add_row(str(r["id"]), r["when"], f"{r['weights']:,}", str(r["seconds"]), r["conversations"],
                              "yes" if r["forgotten"] else "")
            console.print(table if rows else "no memories yet: talk with `nimllm --chat`")
        elif action == "show":
            console.print(printable(show_memory(folder, store, delta_id)), markup=False, highlight=False)
        elif action == "stats":
            for key, value in folder_stats(folder, store).items():
                console.print(f"[bold]{key}[/]: {value}")
        else:
            forgotten = forget_deltas(folder, store, delta_id if action == "forget" else None)
            console.print(f"forgot {len(forgotten)} memor{'y' if len(forgotten) == 1 else 'ies'}; "
                          f"the weights are the base model plus what remains")
    return 0
