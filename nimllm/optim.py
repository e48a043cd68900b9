"""The optimizers training builds: AdamW (fused on CUDA), Muon beside it for the blocks' matrices, and
for --low-memory an AdamW stepped inside backward, a block at a time, with its moments in bfloat16."""
from __future__ import annotations

import weakref
from functools import partial

import torch

from nimllm.config import TrainConfig
from nimllm.model import GPT


def build_optimizer(model: GPT, tcfg: TrainConfig, device_type: str):
    """AdamW with weight decay on matrices only (norm gains are left alone), fused on CUDA; or, with
    tcfg.optimizer "muon", Muon for the blocks' matrices and that AdamW for the embedding and the gains."""
    fused = device_type == "cuda"
    if tcfg.low_memory:
        return OptimizerInBackward(model, tcfg, compiled=fused and tcfg.compile)
    matrices = [p for p in model.blocks.parameters() if p.dim() == 2] if tcfg.optimizer == "muon" else []
    taken = {id(p) for p in matrices}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in taken]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), fused=fused)
    if not matrices:
        return adamw
    # match_rms_adamw scales each matrix's orthogonalised update to AdamW's typical size (Moonlight), so
    # the one learning rate and its schedule serve both
    muon = torch.optim.Muon(matrices, lr=tcfg.lr, weight_decay=tcfg.weight_decay, adjust_lr_fn="match_rms_adamw")
    return Optimizers([muon, adamw])


class Optimizers:
    """Several optimizers stepped as one, over disjoint parameters. The training state reads and writes
    them as one optimizer whose parameters are theirs in order (checkpoint.save_train_state)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:   # fresh each time: load_state_dict replaces the group dicts
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: st for opt in self.optimizers for p, st in opt.state.items()}

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        groups, first = [], 0
        for group in self.param_groups:
            groups.append({**group, "params": list(range(first, first + len(group["params"])))})
            first += len(group["params"])
        return {"state": {}, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        """sd's state and groups numbered across all the optimizers, as state_dict numbers them."""
        groups, first = iter(sd["param_groups"]), 0
        for opt in self.optimizers:
            own = opt.state_dict()
            count = sum(len(g["params"]) for g in own["param_groups"])
            saved = [next(groups) for _ in own["param_groups"]]
            own["param_groups"] = [{**g, "params": mine["params"]} for g, mine in zip(saved, own["param_groups"])]
            own["state"] = {i - first: st for i, st in sd["state"].items() if first <= i < first + count}
            opt.load_state_dict(own)
            first += count


class OptimizerInBackward(Optimizers):
    """AdamW stepped inside backward: each block's parameters as soon as backward has produced all their
    gradients, which are then freed, so one block's gradients (4 bytes a parameter) exist at a time,
    beside those outside the blocks (the final norm's and the embedding's, stepped last); the moments take
    2 bytes each instead of 4 (AdamWBf16Moments). One step a block, not one a parameter:
    a step costs the CPU a launch whatever its size, and these would outnumber the model's own. The price:
    no clipping (it needs every gradient's norm first) and no accumulation."""

    def __init__(self, model: GPT, tcfg: TrainConfig, compiled: bool = False, moment_dtype=torch.bfloat16):
        in_blocks = [list(block.parameters()) for block in model.blocks]
        taken = {id(p) for params in in_blocks for p in params}
        groups = in_blocks + [[p for p in model.parameters() if id(p) not in taken]]
        super().__init__([AdamWBf16Moments(params, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                                           weight_decay=tcfg.weight_decay, moment_dtype=moment_dtype,
                                           compiled=compiled) for params in groups])
        for params, opt in zip(groups, self.optimizers):
            opt.ready = 0   # gradients arrived in this backward
            for p in params:
                # a weak reference: parameter -> hook -> optimizer -> parameter would be a cycle through
                # C++ that the garbage collector cannot see, keeping the model alive forever
                p.register_post_accumulate_grad_hook(partial(self._gradient_ready, weakref.ref(opt)))

    @staticmethod
    def _gradient_ready(opt_ref, param):
        opt = opt_ref()
        opt.ready += 1
        if opt.ready == len(opt.param_groups[0]["params"]):   # (one group: AdamWBf16Moments has no other)
            opt.step()
            opt.zero_grad(set_to_none=True)
            opt.ready = 0


def round_stochastically(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 x in bfloat16, rounded up or down at random with the odds that make the rounding unbiased
    (a moment decays by a few percent a step; rounded to nearest, a change under half a bfloat16 step
    would be lost every time). Random bits are added under the 16 bits bfloat16 keeps, then cut off."""
    if dtype != torch.bfloat16 or x.dtype != torch.float32:
        return x.to(dtype)
    noise = (torch.rand_like(x) * 65536).to(torch.int32)
    return ((x.view(torch.int32) + noise) & -65536).view(torch.float32).to(dtype)


def adamw_steps_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay):
    """torch.optim.AdamW's update of each parameter in place, weight decay on matrices only, the moments
    kept in their own dtype and the arithmetic in the parameter's. steps (each parameter's count) and lr
    are tensors on the parameters' device, so a compiled step neither recompiles as they change nor waits
    for a copy from the CPU."""
    for p, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step += 1
        m = exp_avg.to(p.dtype).lerp_(grad, 1 - beta1)
        v = exp_avg_sq.to(p.dtype).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg.copy_(round_stochastically(m, exp_avg.dtype))
        exp_avg_sq.copy_(round_stochastically(v, exp_avg_sq.dtype))
        if p.dim() >= 2:
            p.mul_(1 - lr * weight_decay)
        p.sub_(lr / (1 - beta1 ** step) * m / (v.sqrt() / (1 - beta2 ** step).sqrt() + eps))


class AdamWBf16Moments(torch.optim.Optimizer):
    """AdamW (torch.optim.AdamW's arithmetic, not amsgrad; weight decay on matrices only) whose moments
    are stored in moment_dtype: bfloat16, rounded stochastically, halves the 8 bytes a parameter that
    fp32 moments take (torch's AdamW keeps them in the parameter's dtype). All its parameters step
    together, at the first group's learning rate. compiled: the step is torch.compile'd, a few fused
    kernels instead of a dozen small ones a parameter."""

    def __init__(self, params, lr: float, betas: tuple[float, float], weight_decay: float, eps: float = 1e-8,
                 moment_dtype: torch.dtype = torch.bfloat16, compiled: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps))
        self.moment_dtype = moment_dtype
        self.update = torch.compile(adamw_steps_, fullgraph=True) if compiled else adamw_steps_
        self.lr = None   # the learning rate as a tensor beside the parameters, made at the first step
        # load_state_dict casts the moments to the parameter's dtype and leaves the count on the CPU
        self.register_load_state_dict_post_hook(lambda opt: opt.place_state())

    def place_state(self) -> None:
        for p, state in self.state.items():
            state["step"] = state["step"].to(p.device, p.dtype)
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = state[key].to(self.moment_dtype)

    @torch.no_grad()
    def step(self) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=torch.zeros((), dtype=p.dtype, device=p.device),
                                     exp_avg=torch.zeros_like(p, dtype=self.moment_dtype),
                                     exp_avg_sq=torch.zeros_like(p, dtype=self.moment_dtype))
        group = self.param_groups[0]
        if self.lr is None:
            self.lr = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
        self.lr.fill_(group["lr"])
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        self.update(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states], [s["step"] for s in states], self.lr, beta1, beta2,
                    group["eps"], group["weight_decay"])
