"""Memory in the weights: after a conversation the model retrains itself, selectively.

An update takes a few Adam steps on the conversation's text (whole, and each exchange alone), with
a few earlier conversations rehearsed and a few windows of the base training text replayed beside
it, and two brakes on forgetting:
- a mask: only the top `mask_fraction` of weights by gradient magnitude (measured once, at the
  start of the update) may move at all, so one conversation changes 1% of the model;
- EWC: a penalty (lambda/2) * sum F_i (w_i - w*_i)^2 pulls every weight back towards the base
  model w*, weighted by the diagonal Fisher information F of the base model on its own training
  data (normalised to mean 1), so weights the base model relies on resist change. Since the
  penalty's gradient also competes for the mask, a weight moved by one conversation is pulled back
  by the next ones unless they keep pushing it. Rehearsal does the rest: a fact said in many
  conversations is rehearsed often and stays, a one-off is drawn less and less often and fades.
  bench/memory.py measures both (README, "Memory").

Each update is stored as its own sparse delta (flat indices and values per tensor, safetensors).
The current weights are the base weights plus every delta not forgotten, added in order; the live
model is built with the very same additions, so a reload is bit-exact, and forgetting a delta
rebuilds the weights as if it had never been added and takes the conversation out of all later
rehearsal. Later deltas stay as they were computed: those that rehearsed it (`nimllm memory show`
names them) may still carry a trace of it, until they are forgotten too.
"""
from __future__ import annotations

import fcntl
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from nimllm import checkpoint
from nimllm.config import MemoryConfig, ModelFolder, UserError
from nimllm.data import TokenShards
from nimllm.fileio import atomic_write
from nimllm.generate import Decoder, fastest_decoder
from nimllm.metrics import plot_memory
from nimllm.model import GPT
from nimllm.store import Store
from nimllm.tokenizer import Tokenizer

Delta = dict[str, tuple[torch.Tensor, torch.Tensor]]   # tensor name -> (flat indices, values)


# ---- the pieces --------------------------------------------------------------------------------

def fisher_diagonal(model: GPT, sequences: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the log-likelihood, one sequence at a time (the empirical Fisher),
    scaled to mean 1 over all weights so that lambda means the same for every model size."""
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for seq in sequences:
        model.zero_grad(set_to_none=True)
        model(seq[None, :-1], seq[None, 1:]).backward()
        for n, p in model.named_parameters():
            fisher[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    mean = sum(f.sum() for f in fisher.values()) / sum(f.numel() for f in fisher.values())
    return {n: f / mean for n, f in fisher.items()}


def ewc_penalty(model: GPT, anchor: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor],
                lam: float) -> torch.Tensor:
    """(lambda / 2) * sum_i F_i (w_i - anchor_i)^2 over every weight."""
    return lam / 2 * sum((fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())


def apply_top_k_mask(grads: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """The flat indices, per tensor, of the `fraction` of all entries with the largest |gradient|:
    exactly round(fraction * total) of them, ties broken by position."""
    names = list(grads)
    flat = torch.cat([grads[n].abs().flatten() for n in names])
    k = max(1, round(fraction * flat.numel()))
    chosen = torch.topk(flat, k, sorted=False).indices.sort().values
    masks, start = {}, 0
    for n in names:
        size = grads[n].numel()
        inside = chosen[(chosen >= start) & (chosen < start + size)] - start
        if inside.numel():
            masks[n] = inside
        start += size
    return masks


def apply_delta(model: GPT, delta: Delta) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (indices, values) in delta.items():
            flat = params[name].view(-1)
            flat.index_put_((indices.to(flat.device),), values.to(flat.device), accumulate=True)


def save_delta(path: Path, delta: Delta) -> None:
    tensors = {}
    for name, (indices, values) in delta.items():
        tensors[f"{name}.indices"] = indices.cpu()
        tensors[f"{name}.values"] = values.cpu()
    atomic_write(path, save(tensors))


def load_delta(path: Path) -> Delta:
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a missing or cut file
        raise UserError(f"the memory file {path} is damaged or missing ({e}); `nimllm memory forget` it") from None
    names = {k.rsplit(".", 1)[0] for k in tensors}
    return {n: (tensors[f"{n}.indices"], tensors[f"{n}.values"]) for n in sorted(names)}


def load_remembered(folder: ModelFolder, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """The model as the chat left it: the base weights plus every memory not forgotten. What
    `nimllm generate`, `eval` and `export` use; nothing is written (no store is created)."""
    model, config = checkpoint.load_model(folder, device)
    if folder.store.exists():
        with Store(folder.store) as store:
            for d in store.deltas():
                if d.n_weights:
                    apply_delta(model, load_delta(folder.root / d.file))
    return model, config


# ---- turning a conversation into training text -------------------------------------------------

def conversation_messages(messages) -> list[tuple[str, str]]:
    """What is learned from stored messages: a bad answer is left out, a fixed one replaced. An agent's
    command (meta "tool_call") is a ("tool_call", command) message, and a bad one takes its output with
    it; an agent's task (meta "agent" on its request) is learned only once the user approved it (/good)
    or corrected it (/fix, an edited command): a wrong command learned would be run again."""
    calls = [bool((m.meta or {}).get("tool_call")) for m in messages]
    agent = any(calls) or any((m.meta or {}).get("agent") for m in messages)
    if agent and not any(m.feedback in ("good", "fix") for m in messages):
        return []
    kept, dropped = [], False
    for m, call in zip(messages, calls):
        dropped = (m.role == "assistant" and m.feedback == "bad") or (m.role == "tool" and dropped)
        if not dropped:
            kept.append(("tool_call" if call else m.role, m.fix if m.feedback == "fix" and m.fix else m.content))
    return kept


def exchanges(messages: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Each user message with the replies that follow it, as a conversation of its own."""
    pieces = []
    for role, content in messages:
        if role == "user" or not pieces:
            pieces.append([])
        pieces[-1].append((role, content))
    return pieces


def training_sequences(tokenizer: Tokenizer, messages: list[tuple[str, str]], block_size: int,
                       text: str = "exchanges") -> list[tuple[list[int], list[int]]]:
    """(input ids, targets with -1 where nothing is learned) windows of at most block_size.

    `text` is how a conversation becomes training text: "conversation" renders it whole, and
    "exchanges" adds every exchange alone. Alone matters: in the whole conversation an answer can be
    copied from a statement earlier in the window, so the update teaches copying; an exchange on its
    own can only be predicted from the weights, which is where tomorrow's answer must come from."""
    parts = [messages] + (exchanges(messages) if text == "exchanges" and len(exchanges(messages)) > 1 else [])
    # In an agent's task the request is the condition, not the lesson: learning its names of files and
    # folders made the agent write them into later tasks' commands (bench/agent.py, README)
    context = ("tool", "user") if any(role == "tool_call" for role, _ in messages) else ("tool",)
    windows = []
    for part in parts:
        ids, mask = tokenizer.render_conversation(part, context_roles=context)
        targets = [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
        inputs = ids[:-1]
        windows += [(inputs[i:i + block_size], targets[i:i + block_size]) for i in range(0, len(inputs), block_size)]
    return windows


def batch(sequences, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to one (B, T) batch; padded targets are -1 and padded inputs harmless end-of-text ids."""
    T = max(len(x) for x, _ in sequences)
    x = torch.zeros(len(sequences), T, dtype=torch.long)
    y = torch.full((len(sequences), T), -1, dtype=torch.long)
    for i, (inp, tgt) in enumerate(sequences):
        x[i, :len(inp)] = torch.tensor(inp)
        y[i, :len(tgt)] = torch.tensor(tgt)
    return x.to(device), y.to(device)


# Adam moves every chosen weight by about lr per step, however small its gradient; SGD moves each in
# proportion to its gradient (what sparse memory fine-tuning uses, since Adam's fresh moments distort
# rarely updated entries).
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


# ---- one update ----------------------------------------------------------------------------------

@dataclass
class UpdateReport:
    n_weights: int
    total_weights: int
    seconds: float
    loss_before: float
    loss_after: float
    layers: dict[str, int] = field(default_factory=dict)          # tensor name -> weights changed
    largest: list[tuple[str, float]] = field(default_factory=list)  # biggest single moves
    delta_id: int | None = None
    rehearsed: list[int] = field(default_factory=list)             # earlier conversations rehearsed
    diverged: bool = False                                          # weights went inf or nan: nothing changed

    def __str__(self) -> str:
        if self.diverged:
            return ("the update diverged (weights became inf or nan), so nothing was changed; "
                    "a smaller learning rate would avoid it")
        top = sorted(self.layers.items(), key=lambda kv: -kv[1])[:3]
        return (f"updated {self.n_weights:,} weights ({self.n_weights / self.total_weights:.2%}) in "
                f"{self.seconds:.1f} s | loss on the conversation {self.loss_before:.3f} -> {self.loss_after:.3f}\n"
                f"  most changed: {', '.join(f'{n} ({c:,})' for n, c in top)}\n"
                f"  largest moves: {', '.join(f'{n} {v:+.4f}' for n, v in self.largest)}")

    def stats(self) -> dict:
        return {"loss_before": self.loss_before, "loss_after": self.loss_after, "layers": self.layers,
                "largest": self.largest, "rehearsed": self.rehearsed, "diverged": self.diverged}


def selective_update(model: GPT, x: torch.Tensor, y: torch.Tensor, anchor: dict, fisher: dict,
                     mcfg: MemoryConfig, extra: list[tuple[torch.Tensor, torch.Tensor]] = (),
                     ) -> tuple[Delta, UpdateReport]:
    """A few optimizer steps on the top-|gradient| entries only, against the conversation's loss plus
    EWC, plus the mean loss of each `extra` batch (earlier conversations rehearsed, windows of the base
    training text). The model ends at old weights + delta, added exactly as a reload adds it."""
    start = time.time()
    params = dict(model.named_parameters())
    model.train(False)   # no dropout: the update should be a function of the conversation

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        lm = model(x, y)
        rehearsal = sum(model(*xy) for xy in extra)
        (lm + rehearsal + ewc_penalty(model, anchor, fisher, mcfg.ewc_lambda)).backward()
        return lm.item()

    loss_before = loss_and_grads()
    masks = apply_top_k_mask({n: p.grad for n, p in params.items()}, mcfg.mask_fraction)
    old = {n: params[n].detach().view(-1)[idx].clone() for n, idx in masks.items()}
    moving = {n: old[n].clone().requires_grad_(True) for n in masks}
    optimizer = OPTIMIZERS[mcfg.optimizer](list(moving.values()), lr=mcfg.lr)
    for step in range(mcfg.steps):
        if step:
            loss_and_grads()
        for n, idx in masks.items():
            moving[n].grad = params[n].grad.view(-1)[idx]
        optimizer.step()
        with torch.no_grad():
            for n, idx in masks.items():
                params[n].view(-1)[idx] = moving[n]
    model.zero_grad(set_to_none=True)

    delta = {n: (idx.cpu(), (moving[n].detach() - old[n]).cpu()) for n, idx in masks.items()}
    diverged = not all(torch.isfinite(values).all() for _, values in delta.values())
    if diverged:   # a model that answers nan from now on is worse than one that did not learn this
        delta = {}
    with torch.no_grad():   # back to the old weights, then forward by the delta as a reload does
        for n, idx in masks.items():
            params[n].view(-1)[idx] = old[n]
    apply_delta(model, delta)
    with torch.no_grad():
        loss_after = model(x, y).item()
    largest = sorted(((n, vals[vals.abs().argmax()].item()) for n, (_, vals) in delta.items()),
                     key=lambda nv: -abs(nv[1]))[:3]
    report = UpdateReport(sum(len(i) for i, _ in delta.values()), sum(p.numel() for p in params.values()),
                          time.time() - start, loss_before, loss_after,
                          {n: len(i) for n, (i, _) in delta.items()}, largest, diverged=diverged)
    return delta, report


# ---- the model folder's memory -------------------------------------------------------------------

@contextmanager
def learning_lock(folder: ModelFolder):
    """One change to a model folder's memory at a time, across processes (a second chat waits)."""
    folder.memory.mkdir(parents=True, exist_ok=True)
    with open(folder.memory / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def forget(folder: ModelFolder, store: Store, delta_id: int | None = None) -> list[int]:
    """Forget one memory (with no id, all of them): the next load rebuilds the weights without it.
    Returns the ids forgotten."""
    with learning_lock(folder):
        deltas = store.deltas() if delta_id is None else [store.delta(delta_id)]
        if delta_id is None:
            store.reset()
        elif deltas[0].forgotten is None:
            store.forget_delta(delta_id)
    for d in deltas:   # after the database says so: a kill in between leaves only a stray file
        (folder.root / d.file).unlink(missing_ok=True)
    return [d.id for d in deltas]


def memory_history(folder: ModelFolder, store: Store) -> list[dict]:
    """One row per memory, oldest first, for `nimllm memory list`."""
    titles = {}
    for c in store.conversations():
        if c.learned_delta is not None:
            titles.setdefault(c.learned_delta, []).append(c.title or f"conversation {c.id}")
    return [{"id": d.id, "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(d.created)),
             "weights": d.n_weights, "seconds": round(d.seconds, 2), "conversations": "; ".join(titles.get(d.id, [])),
             "forgotten": d.forgotten is not None} for d in store.deltas(include_forgotten=True)]


def show_memory(folder: ModelFolder, store: Store, delta_id: int) -> str:
    """A memory in words: when, how big, what changed, and the conversation it came from."""
    d = store.delta(delta_id)
    lines = [f"memory {d.id}, {time.strftime('%Y-%m-%d %H:%M', time.localtime(d.created))}: "
             f"{d.n_weights:,} weights in {d.seconds:.2f} s{' (forgotten)' if d.forgotten else ''}",
             f"loss on the conversation {d.stats.get('loss_before', 0):.3f} -> {d.stats.get('loss_after', 0):.3f}",
             "most changed: " + ", ".join(f"{n} ({c:,})" for n, c in
                                          sorted(d.stats.get("layers", {}).items(), key=lambda kv: -kv[1])[:5]),
             "rehearsed earlier conversations: " + (", ".join(map(str, d.stats.get("rehearsed", []))) or "none")]
    for c in store.conversations():
        if c.learned_delta == d.id:
            lines += [f"conversation {c.id}:"] + [f"  {m.role}: {m.content}" for m in store.messages(c.id)]
    return "\n".join(lines)


def memory_stats(folder: ModelFolder, store: Store) -> dict:
    """Totals over the memories kept, and memory.png: how memory grew."""
    kept = store.deltas()
    plot_memory([d.n_weights for d in kept], [d.seconds for d in kept], folder.root / "memory.png")
    on_disk = sum((folder.root / d.file).stat().st_size for d in kept if (folder.root / d.file).exists())
    return {"memories kept": len(kept), "forgotten": len(store.deltas(include_forgotten=True)) - len(kept),
            "weights changed (sum)": f"{sum(d.n_weights for d in kept):,}",
            "update time (mean)": f"{sum(d.seconds for d in kept) / max(len(kept), 1):.2f} s",
            "conversations": len(store.conversations()), "on disk": f"{on_disk / 1e6:.1f} MB",
            "plot": str(folder.root / "memory.png")}


class Memory:
    """A model folder's model with everything it has learned from conversations, its tokenizer and
    its conversation store; `learn` and `forget` change the weights and keep the folder in step."""

    def __init__(self, folder: ModelFolder, device: str | None = None, mcfg: MemoryConfig | None = None):
        from nimllm.train import pick_device
        self.folder, self.mcfg = folder, mcfg or MemoryConfig()
        self.device = pick_device(device)
        self.model, self.config = checkpoint.load_model(folder, self.device)
        self.tokenizer = Tokenizer.load(folder.tokenizer)
        folder.memory.mkdir(parents=True, exist_ok=True)
        self.store = Store(folder.store)
        self.anchor = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self._fisher: dict[str, torch.Tensor] | None = None
        self.applied: list[int] = []
        self._catch_up()
        self._decoder: tuple[tuple, Decoder] | None = None

    def decoder(self, batch_size: int = 1, compile: bool = False) -> Decoder:
        """The fastest decoder of the weights as they are now, for batch_size sequences (compiled on a
        GPU if asked): built again once memories change them."""
        key = (tuple(self.applied), batch_size, compile)
        if self._decoder is None or self._decoder[0] != key:
            self._decoder = None   # free the old copy of the weights first
            self._decoder = (key, fastest_decoder(self.model, batch_size, compile))
        return self._decoder[1]

    @property
    def fisher_path(self) -> Path:
        return self.folder.memory / "fisher.safetensors"

    @property
    def fisher(self) -> dict[str, torch.Tensor]:
        """Estimated once, on the base model and its latest training corpus, then kept in the folder;
        first needed by the first update, so a memory that only talks (a server without --remember)
        never pays for it."""
        if self._fisher is None and self.fisher_path.exists():
            self._fisher = {n: t.to(self.device) for n, t in load_file(str(self.fisher_path)).items()}
        if self._fisher is None:
            x, y = self._base_windows(self.mcfg.fisher_sequences, seed=0)
            sequences = [torch.cat([xi, yi[-1:]]).to(self.device) for xi, yi in zip(x, y)]
            base, _ = checkpoint.load_model(self.folder, self.device)   # without the memories added since
            self._fisher = fisher_diagonal(base, sequences)
            atomic_write(self.fisher_path, save({n: f.cpu() for n, f in self._fisher.items()}))
        return self._fisher

    def _base_windows(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n windows of the base model's latest training corpus, the same ones for the same seed."""
        shards = TokenShards(self.folder.root / self.config["corpora"][-1]["data"], "train")
        return shards.get_batch(n, self.model.cfg.block_size, torch.Generator().manual_seed(seed))

    def _rehearsal(self, learning: list[int]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[int]]:
        """What each update rehearses beside the new conversation: a few earlier conversations still
        remembered (a fact said in many conversations is rehearsed often and stays, a one-off fades as
        the others crowd it out) and a few windows of the base training text (which the update should
        not unlearn). Drawn by the memory's place in line, so relearning repeats the draw exactly."""
        rng = random.Random(len(self.applied))
        remembered = {d.id for d in self.store.deltas()}
        earlier = [c.id for c in self.store.conversations()
                   if c.learned_delta in remembered and c.id not in learning]
        chosen = sorted(rng.sample(earlier, min(self.mcfg.rehearse_conversations, len(earlier))))
        extra = []
        if chosen:
            messages = [conversation_messages(self.store.messages(cid)) for cid in chosen]
            sequences = [s for m in messages for s in training_sequences(self.tokenizer, m, self.model.cfg.block_size,
                                                                         self.mcfg.text)]
            extra.append(batch(sequences, self.device))
        if self.mcfg.replay_sequences:
            extra.append(tuple(t.to(self.device) for t in
                               self._base_windows(self.mcfg.replay_sequences, seed=1 + len(self.applied))))
        return extra, chosen

    def _catch_up(self) -> None:
        """Add the deltas this process has not added yet (another chat may have learned something)."""
        active = self.store.deltas()
        if [d.id for d in active[:len(self.applied)]] != self.applied:   # one was forgotten: rebuild
            self._rebuild(active)
            return
        for d in active[len(self.applied):]:
            if d.n_weights:
                apply_delta(self.model, load_delta(self.folder.root / d.file))
            self.applied.append(d.id)

    def _rebuild(self, active) -> None:
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

    def learn(self, conversation_ids: list[int], log=print) -> UpdateReport | None:
        """Retrain on these conversations and record the change as one delta."""
        messages = [m for cid in conversation_ids for m in conversation_messages(self.store.messages(cid))]
        if not any(role == "user" for role, _ in messages):
            return None
        with self._lock():
            sequences = training_sequences(self.tokenizer, messages, self.model.cfg.block_size, self.mcfg.text)
            x, y = batch(sequences, self.device)
            extra, rehearsed = self._rehearsal(conversation_ids)
            task = any(role == "tool_call" for role, _ in messages)
            mcfg = replace(self.mcfg, lr=self.mcfg.agent_lr) if task else self.mcfg
            delta, report = selective_update(self.model, x, y, self.anchor, self.fisher, mcfg, extra)
            report.rehearsed = rehearsed
            name = f"memory/delta-{time.time_ns()}-{os.getpid()}.safetensors"
            save_delta(self.folder.root / name, delta)
            report.delta_id = self.store.record_delta(conversation_ids, name, report.n_weights, report.seconds,
                                                      report.stats())
            self.applied.append(report.delta_id)
        log(str(report))
        return report

    def learn_pending(self, log=print) -> list[UpdateReport]:
        """Conversations a killed chat left unlearned, learned one by one."""
        reports = []
        for cid in self.store.unlearned():
            if not conversation_messages(self.store.messages(cid)):
                continue   # an agent's task the user did not approve: nothing to learn, nothing to say
            log(f"remembering an earlier conversation ({cid})...")
            report = self.learn([cid], log)
            if report:
                reports.append(report)
        return reports

    def forget(self, delta_id: int | None = None) -> list[int]:
        """Forget one memory, or all of them; the weights become base + the remaining deltas."""
        forgotten = forget(self.folder, self.store, delta_id)
        self._rebuild(self.store.deltas())
        return forgotten

    def stats(self) -> dict:
        return memory_stats(self.folder, self.store)
