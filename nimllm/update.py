"""One selective update: a few optimizer steps on the top 1% of weights, held back by EWC, that stop
once the lessons are learned.

- a mask: only the top `mask_fraction` of weights by gradient magnitude (measured once, at the start
  of the update) may move at all, so one conversation changes 1% of the model;
- EWC: a penalty (lambda/2) * sum F_i (w_i - w*_i)^2 pulls every weight back towards the base model
  w*, weighted by the diagonal Fisher information F of the base model on its own training data
  (normalised to mean 1), so weights the base model relies on resist change;
- a stop: the steps end as soon as every answer token of the lessons is the model's first choice
  and their mean loss is under `learned_loss`, not after a fixed count that goes on to memorise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nimllm.config import MemoryConfig
from nimllm.model import GPT, at_least_fp32
from nimllm.runtime import Runtime

Delta = dict[str, tuple[torch.Tensor, torch.Tensor]]   # tensor name -> (flat indices, values)


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


def apply_delta(model: GPT, delta: Delta, scale: float = 1.0) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (indices, values) in delta.items():
            flat = params[name].view(-1)
            flat.index_put_((indices.to(flat.device),), (values * scale).to(flat.device), accumulate=True)


def scaled(delta: Delta, scale: float) -> Delta:
    return {n: (i, v * scale) for n, (i, v) in delta.items()}


# Attention in the update, cuDNN's left out: it builds a plan for every new (B, T), every update brings
# new ones (its lessons' lengths), and a profile of the update showed about 200 us of CPU per cuDNN call.
UPDATE_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# Adam moves every chosen weight by about lr per step, however small its gradient; SGD moves each in
# proportion to its gradient (what sparse memory fine-tuning uses, since Adam's fresh moments distort
# rarely updated entries).
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass
class UpdateReport:
    n_weights: int
    total_weights: int
    seconds: float
    loss_before: float
    loss_after: float
    steps: int = 0                                                  # optimizer steps taken
    learned: bool = False                                           # stopped because the lessons were learned
    lessons: int = 0                                                # lessons (questions with answers) trained
    layers: dict[str, int] = field(default_factory=dict)            # tensor name -> weights changed
    largest: list[tuple[str, float]] = field(default_factory=list)  # biggest single moves
    delta_id: int | None = None
    rehearsed: list[int] = field(default_factory=list)              # earlier conversations rehearsed
    diverged: bool = False                                          # weights went inf or nan: nothing changed
    scale: float = 1.0                                              # share of the update kept by the control check
    control: tuple[int, int] | None = None                          # control answers kept / all, after it
    timings: dict[str, float] = field(default_factory=dict)         # seconds per stage of Memory.learn

    def __str__(self) -> str:
        if self.diverged:
            return ("the update diverged (weights became inf or nan), so nothing was changed; "
                    "a smaller learning rate would avoid it")
        if self.scale == 0:
            return (f"learned in {self.seconds:.1f} s ({self.lessons} lessons, {self.steps} steps) but not kept: even a "
                    f"quarter of the update changed the model's answers to unrelated prompts"
                    + (f"\n  control answers kept: {self.control[0]}/{self.control[1]}" if self.control else ""))
        top = sorted(self.layers.items(), key=lambda kv: -kv[1])[:3]
        lines = [f"updated {self.n_weights:,} weights ({self.n_weights / self.total_weights:.2%}) in "
                 f"{self.seconds:.1f} s{self._waited()} | {self.lessons} lessons, {self.steps} steps"
                 f"{' (learned)' if self.learned else ''} | loss {self.loss_before:.3f} -> {self.loss_after:.3f}"]
        if self.control:
            lines.append(f"  control answers kept: {self.control[0]}/{self.control[1]}")
        if self.scale < 1:
            lines.append(f"  scaled back to {self.scale:.0%}: the full update changed the model's answers to "
                         f"unrelated prompts")
        if top:
            lines.append(f"  most changed: {', '.join(f'{n} ({c:,})' for n, c in top)}")
        return "\n".join(lines)

    def _waited(self) -> str:
        waited = self.timings.get("wait for the warm-up", 0.0)
        return f" (after {waited:.1f} s for the warm-up)" if waited >= 0.5 else ""

    def stats(self) -> dict:
        return {"loss_before": self.loss_before, "loss_after": self.loss_after, "steps": self.steps,
                "learned": self.learned, "lessons": self.lessons, "layers": self.layers, "largest": self.largest,
                "rehearsed": self.rehearsed, "diverged": self.diverged, "scale": self.scale,
                "control": list(self.control) if self.control else None, "timings": self.timings}


@dataclass
class AnswerBatches:
    """Batches of answers (targets -1 elsewhere) regrouped for scoring in as few padded tokens as may be:
    every row cut after its last answer token (causal attention: what follows cannot change the answers
    before it), the rows sorted by length and batched with rows of about their length, and for each
    answer token, in the order `scored` gives them, which of the given batches it came from."""
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    picked: list[torch.Tensor]   # for each given batch, (N,): which answer tokens are its

    @classmethod
    def of(cls, given: list[tuple[torch.Tensor, torch.Tensor]], shrink: float = 0.6) -> "AnswerBatches":
        """A new batch starts where the rows get shorter than `shrink` times its first (longest) row,
        so at most 1 - shrink of it is padding, in a few batches."""
        rows = []
        for i, (x, y) in enumerate(given):
            for x_row, y_row in zip(x, y):
                answered = (y_row >= 0).nonzero()
                if len(answered):
                    end = int(answered[-1]) + 1
                    rows.append((x_row[:end], y_row[:end], i))
        rows.sort(key=lambda row: -len(row[0]))
        groups: list[list] = []
        for row in rows:
            if not groups or len(row[0]) < shrink * len(groups[-1][0][0]):
                groups.append([])
            groups[-1].append(row)
        batches, source = [], []
        for group in groups:
            T = len(group[0][0])
            x = torch.stack([F.pad(r[0], (0, T - len(r[0])), value=0) for r in group])      # (B, T)
            y = torch.stack([F.pad(r[1], (0, T - len(r[1])), value=-1) for r in group])     # (B, T)
            batches.append((x, y))
            source.append(torch.tensor([r[2] for r in group], device=y.device).repeat_interleave((y >= 0).sum(1)))
        source = torch.cat(source)
        return cls(batches, [source == i for i in range(len(given))])

    def scored(self, model: GPT) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each given batch's mean loss on its answers, and which of its answer tokens the model ranks
        first: logits only where there is an answer, one forward pass per regrouped batch."""
        logits = torch.cat([model(x, where=y >= 0) for x, y in self.batches])            # (N, V)
        targets = torch.cat([y[y >= 0] for _, y in self.batches])                       # (N,)
        logits = at_least_fp32(logits)
        losses = F.cross_entropy(logits, targets, reduction="none")
        right = logits.argmax(-1) == targets
        return [losses[p].sum() / p.sum().clamp(min=1) for p in self.picked], [right[p] for p in self.picked]


def selective_update(model: GPT, x: torch.Tensor, y: torch.Tensor, anchor: dict, fisher: dict,
                     mcfg: MemoryConfig, extra: list[tuple[torch.Tensor, torch.Tensor]] = (),
                     keep: list[tuple[torch.Tensor, torch.Tensor]] = ()) -> tuple[Delta, UpdateReport]:
    """Optimizer steps on the top-|gradient| entries only, against the lessons' loss plus EWC, plus the
    mean loss of each `extra` batch (windows of the base training text) and each `keep` batch (earlier
    lessons, the control answers), until the lessons are learned and every answer token of `keep` the
    model ranked first at the start is first again, or mcfg.steps are taken. The model ends at old
    weights + delta, added exactly as a reload adds it."""
    start = time.time()
    params = dict(model.named_parameters())
    model.train(False)   # no dropout: the update should be a function of the lessons
    objective = lessons_objective(model, x, y, mcfg, extra, keep)
    # the first gradient, EWC's included, chooses the weights that may move
    model.zero_grad(set_to_none=True)
    total, loss_before, learned = objective()
    (total + ewc_penalty(model, anchor, fisher, mcfg.ewc_lambda)).backward()
    masks = apply_top_k_mask({n: p.grad for n, p in params.items()}, mcfg.mask_fraction)
    old = {n: params[n].detach().view(-1)[idx].clone() for n, idx in masks.items()}
    moving, steps, learned = masked_steps(params, masks, old, anchor, fisher, mcfg, objective, total, learned)
    model.zero_grad(set_to_none=True)
    delta = {n: (idx.cpu(), (moving[n].detach() - old[n]).cpu()) for n, idx in masks.items()} if steps else {}
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
                          time.time() - start, loss_before, loss_after, steps, learned and not diverged,
                          layers={n: len(i) for n, (i, _) in delta.items()}, largest=largest, diverged=diverged)
    return delta, report


def lessons_objective(model: GPT, x: torch.Tensor, y: torch.Tensor, mcfg: MemoryConfig,
                      extra: list[tuple[torch.Tensor, torch.Tensor]], keep: list[tuple[torch.Tensor, torch.Tensor]]):
    """A function of the model's weights as they are when called: the loss to descend (without EWC),
    the lessons' loss, and whether they are learned with the kept answers right again (the answer
    tokens of `keep` ranked first at the first call)."""
    matmuls = Runtime(x.device.type).autocast()   # bf16 on a GPU, as the chat's decoder answers there
    # the lessons and the answers to keep are short: scored together, on a CPU in batches of rows of like
    # length (it computes every padded token); on a GPU in one batch (padding is cheap there, passes are not)
    answers = AnswerBatches.of([(x, y), *keep], shrink=0.6 if x.device.type == "cpu" else 0.0)
    right_before = None

    def objective() -> tuple[torch.Tensor, float, bool]:
        nonlocal right_before
        with matmuls, sdpa_kernel(UPDATE_ATTENTION):
            losses, right = answers.scored(model)
            total = sum(losses) + sum(model(*xy) for xy in extra)
        if right_before is None:
            right_before = right[1:]
        lesson = losses[0].item()
        learned = (bool(right[0].all()) and lesson <= mcfg.learned_loss
                   and all(bool(now[before].all()) for now, before in zip(right[1:], right_before)))
        return total, lesson, learned
    return objective


def masked_steps(params: dict, masks: dict, old: dict, anchor: dict, fisher: dict, mcfg: MemoryConfig,
                 objective, total: torch.Tensor, learned: bool) -> tuple[dict, int, bool]:
    """Optimizer steps on the masked entries alone (the model's gradients of `total` are there for the
    first), until learned or mcfg.steps: the moved entries, the steps taken, and whether learned."""
    moving = {n: old[n].clone().requires_grad_(True) for n in masks}
    # only the chosen weights move, so EWC's gradient is needed there alone: lambda * F * (w - anchor)
    ewc_pull = {n: (mcfg.ewc_lambda * fisher[n].view(-1)[idx], anchor[n].view(-1)[idx]) for n, idx in masks.items()}
    optimizer = OPTIMIZERS[mcfg.optimizer](list(moving.values()), lr=mcfg.lr)
    steps = 0
    while not learned and steps < mcfg.steps:
        if steps:   # the first gradient has EWC's already
            for p in params.values():
                p.grad = None
            total.backward()
        for n, idx in masks.items():
            weight, at = ewc_pull[n]
            moving[n].grad = params[n].grad.view(-1)[idx] + (weight * (moving[n].detach() - at) if steps else 0)
        optimizer.step()
        with torch.no_grad():
            for n, idx in masks.items():
                params[n].view(-1)[idx] = moving[n]
        steps += 1
        total, _, learned = objective()
    return moving, steps, learned
