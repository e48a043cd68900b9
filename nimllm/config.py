"""Settings: model and training dataclasses, named presets, and the layout of a model folder.

Everything else takes one of these objects instead of reading globals, so a run is fully
described by what `config.json` in its model folder says.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    n_layer: int = 8
    n_embd: int = 1024
    n_head: int = 16
    block_size: int = 512          # context length in tokens
    mlp_ratio: int = 4
    activation: str = "gelu"       # "gelu" or "relu2" (squared ReLU, what llama.cpp's Arcee graph runs)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    qk_norm: bool = False          # RMS-normalise each head's queries and keys before attention
    zero_init: bool = False        # the residual projections (attention out, MLP down) start at zero

    def __post_init__(self):
        if min(self.n_layer, self.n_embd, self.n_head, self.block_size) < 1:
            raise ValueError("n_layer, n_embd, n_head and block_size must be 1 or more")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.activation not in ("gelu", "relu2"):
            raise ValueError(f"activation must be 'gelu' or 'relu2', not {self.activation!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class TrainConfig:
    micro_batch: int = 32          # sequences per forward pass (per process)
    grad_accum: int = 8            # micro-batches per optimizer step, summed over all processes
    lr: float = 6e-4
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"       # "adamw", or "muon": Muon for the blocks' matrices, AdamW for the rest
    schedule: str = "cosine"       # "cosine" decay after the warm-up, or "wsd": flat, then linear over the
    cooldown_share: float = 0.4    # last cooldown_share of the steps after the warm-up
    max_steps: int = 25000         # cap on the default training length
    max_epochs: float = 10.0       # small corpora: stop before seeing the data more often than this
    tokens_per_param: float = 20.0  # default budget (Chinchilla), capped by the two above
    eval_interval: int = 250
    keep_best: bool = True         # a run that goes on past its lowest validation ends with those weights
    eval_tokens: int = 262144      # validation tokens used by the periodic evaluation
    log_interval: int = 10
    checkpoint_minutes: float = 10.0
    seed: int = 1337
    compile: bool = False
    activation_checkpointing: bool = False
    # Under 1.8 GB of GPU memory for the 103m preset: the optimizer steps inside backward so gradients
    # never all exist at once, its moments are bfloat16, activations are recomputed, micro-batches are
    # LOW_MEMORY_MICRO_BATCH at most, and there is no clipping or accumulation (nimllm/optim.py).
    low_memory: bool = False
    fp8: bool = False              # the blocks' matmuls in FP8 on GPUs that have them (nimllm/fp8.py)
    bpe_dropout: float = 0.0       # the training text also tokenized with merges dropped at this rate (data.py)


LOW_MEMORY_MICRO_BATCH = 20   # 103m at 20 peaks at 1.797 GB on the H200 (README, "Training speed")


@dataclass
class MemoryConfig:
    """Selective retraining after a conversation (nimllm/memory.py, nimllm/update.py)."""
    # chosen with bench/memory.py (README, "Memory"): recall against drift of the base model's own text
    mask_fraction: float = 0.01    # share of all weights one conversation may change
    steps: int = 64                # at most this many Adam steps on the masked weights; fewer once learned. At
                                   # 32, 24 of 30 103m updates hit the limit unlearned; at 64, 103m recalled 28 of
                                   # 30 facts through chat processes, and in one process 83/90 sampled against 71/90
                                   # (bench/results/memory_103m_h200_steps64.json, memory_inprocess_...steps64.json)
    learned_loss: float = 0.1      # learned: every answer token ranked first and the mean loss under this
                                   # (10m, 10 facts, sampled at 0.7: 14/30 at 0.3, 21/30 at 0.1)
    lr: float = 3e-4               # 10m: 1e-4 recalled nothing; 1e-3 (10m, 103m) no more recall, 2-3x the drift
    agent_lr: float = 1e-5         # an agent's approved or corrected task: at 3e-4 (even 3e-5) learning ten of its
                                   # own successes made it write their commands for every request, and 21
                                   # corrections taught new kinds of task best at 1e-5 (bench/agent.py --fix)
    ewc_lambda: float = 0.01       # EWC strength, against a Fisher normalised to mean 1 over all weights
    fisher_sequences: int = 32     # base-corpus sequences the Fisher diagonal is estimated from
    optimizer: str = "adam"        # "adam" or "sgd" on the chosen weights
    replay_sequences: int = 4      # windows of the base training text replayed in each update: cut the drift 3-7x
    rehearse_conversations: int = 64  # earlier conversations rehearsed in each update: 103m recalled 3/3 facts
                                      # at K=3 and 19/30 at K=30 with 16, 1/3 and 0/30 without
    rehearse_control: bool = True  # the control answers are a loss term of every update, as the base text is
    keep_answers: bool = True      # an update is learned only once the rehearsed lessons and control answers
                                   # it found right are right again (else they are only a loss term)
    control_share: float = 0.1     # share of the control answers one update may change before it is scaled
                                   # back (halved, twice) or not kept. At 0 every 103m update was refused (the
                                   # lessons move some answer); with the control rehearsed, 10m kept 38/40
                                   # after 10 facts with no check at all


@dataclass
class Preset:
    model: ModelConfig
    train: TrainConfig
    note: str = ""
    memory: dict = field(default_factory=dict)   # changes to MemoryConfig for the models of this preset


PRESETS: dict[str, Preset] = {
    "103m": Preset(
        ModelConfig(),
        # lr 2e-4, not GPT-2's 6e-4: what users train is a few MB seen ten times, and there, on the H200, 6e-4
        # held out 3.09 bits per byte and refused every chat update (the control answers moved), 2e-4 held
        # out 2.95 and recalled 27 of 30 facts (bench/results/memory_lr_h200.txt)
        TrainConfig(micro_batch=64, grad_accum=8, lr=2e-4, compile=True),
        "8 layers x 1024 wide, 16 heads, context 512: the GPU default",
    ),
    "10m": Preset(
        ModelConfig(n_layer=6, n_embd=384, n_head=6, block_size=256, dropout=0.1),
        TrainConfig(micro_batch=64, grad_accum=1, lr=1e-3, warmup_steps=100, max_steps=5000,
                    eval_interval=250, compile=True),
        "6 layers x 384 wide, context 256: nanoGPT's baby GPT shape",
    ),
    "tiny": Preset(
        ModelConfig(n_layer=4, n_embd=128, n_head=4, block_size=128),
        TrainConfig(micro_batch=16, grad_accum=2, lr=2e-3, warmup_steps=30, max_steps=600,
                    eval_interval=100, eval_tokens=32768, log_interval=10),
        "4 layers x 128 wide, context 128: seconds to minutes on a CPU, for tests and smoke runs",
        # 1% of 1M weights cannot hold a fact: at 1% and 3e-4 tiny recalled 0 of 10 facts (0 of 30 sampled) and
        # kept 29 of 40 control answers, its updates never learned and so scaled back or refused; at 10% and 1e-3,
        # 10 of 10 (24 of 30) and 38 of 40; at 10% and 3e-3, 10 of 10 (29 of 30) and 40 of 40
        # (bench/results/memory_tiny_cpu_inprocess.json)
        memory={"mask_fraction": 0.1, "lr": 3e-3},
    ),
}


def memory_config(preset: str | None, **changes) -> MemoryConfig:
    """The memory settings of a model of this preset (a preset's own, where it has them), with `changes`."""
    return replace(MemoryConfig(), **{**(PRESETS[preset].memory if preset in PRESETS else {}), **changes})


def default_preset_name(device: str) -> str:
    return "103m" if device == "cuda" else "tiny"


@dataclass
class DefaultChoice:
    """What `nimllm --train` picks where no flag says: a preset, what it changes of it, the vocabulary and
    the number of made-up dialogues mixed in, and why, in one line."""
    preset: str | None   # None: the one the model folder was trained with
    vocab_size: int = 8192
    chat_skills: int = 20000
    model: dict = field(default_factory=dict)   # changes to the preset's ModelConfig
    train: dict = field(default_factory=dict)   # and to its TrainConfig
    why: str = ""


GPU_SMALL_CORPUS = 10_000_000   # bytes under which a GPU trains 10m rather than 103m


def default_choice(corpus_bytes: int, device: str) -> DefaultChoice:
    """The model a corpus of this size gets on this device, as measured by bench/quality.py (README,
    "Quality"). A vocabulary of 2048 tokens under 16 MB: on 1 MB on a CPU it beat 512, 1024 and 8192 (the
    output layer of 8192 is also most of tiny's compute). A CPU trains `tiny` in steps of 512 tokens (many
    more updates in a short run than 4096) with 2,000 dialogues (20,000 took three quarters of a short run's
    tokens). A GPU trains 10m with dropout under GPU_SMALL_CORPUS (on 1 to 4 MB a 10M model beat 103m by 0.3
    to 0.7 bits per byte at equal wall clock) and 103m above it."""
    size = f"{corpus_bytes / 1e6:.1f} MB"
    vocab = 2048 if corpus_bytes < 16e6 or device != "cuda" else 8192
    if device != "cuda":
        return DefaultChoice("tiny", vocab, 2000, train={"micro_batch": 4, "grad_accum": 1, "max_steps": 4800},
                             why=f"{size} of text on a CPU: the tiny preset, {vocab} tokens, steps of 512 tokens")
    if corpus_bytes < GPU_SMALL_CORPUS:
        return DefaultChoice("10m", vocab, model={"dropout": 0.2},
                             why=f"{size} of text (under {GPU_SMALL_CORPUS / 1e6:.0f} MB) on a GPU: the 10m preset, "
                                 f"{vocab} tokens, dropout 0.2 (--preset 103m for the large model)")
    return DefaultChoice("103m", vocab, why=f"{size} of text on a GPU: the 103m preset, {vocab} tokens")


def dataclass_from_dict(cls, values: dict):
    """Build a dataclass from a dict, ignoring keys it does not know (older or newer folders)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def override(obj, **changes):
    """`replace` that skips None values, so unset command-line options keep the preset's value; settings
    that do not go together (a width the heads do not divide) are the user's error."""
    try:
        return replace(obj, **{k: v for k, v in changes.items() if v is not None})
    except ValueError as e:
        raise UserError(str(e)) from None


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "2h", "1h30m" or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    total, number = 0.0, ""
    for ch in text.strip().lower():
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total, number = total + float(number) * units[ch], ""
        else:
            raise ValueError(f"not a duration: {text!r} (try 90s, 30m, 2h or 1h30m)")
    total += float(number) if number else 0.0
    if total <= 0:
        raise ValueError(f"not a duration: {text!r} (try 90s, 30m, 2h or 1h30m)")
    return total


def nimllm_home() -> Path:
    return Path(os.environ.get("NIMLLM_HOME", Path.home() / ".nimllm")).expanduser()


@dataclass(frozen=True)
class ModelFolder:
    """Where each file of a user's model lives; every reader and writer goes through this."""
    root: Path

    @classmethod
    def resolve(cls, name_or_dir: str | None) -> "ModelFolder":
        """A name means `$NIMLLM_HOME/models/NAME`; anything with a path separator is a folder."""
        name_or_dir = name_or_dir or "default"
        if os.sep in name_or_dir or name_or_dir.startswith("."):
            return cls(Path(name_or_dir).expanduser().resolve())
        return cls(nimllm_home() / "models" / name_or_dir)

    def require_model(self) -> None:
        """A clear error when nothing was trained here (cheap: no weights are read)."""
        if not self.config.exists():
            raise UserError(f"no model in {self.root}: train one first with `nimllm --train FILE`")

    config = property(lambda self: self.root / "config.json")
    tokenizer = property(lambda self: self.root / "tokenizer.json")
    weights = property(lambda self: self.root / "model.safetensors")
    train_state = property(lambda self: self.root / "train_state.safetensors")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    loss_plot = property(lambda self: self.root / "loss.png")
    data = property(lambda self: self.root / "data")
    store = property(lambda self: self.root / "conversations.sqlite")
    memory = property(lambda self: self.root / "memory")
    control = property(lambda self: self.root / "control.json")


class UserError(Exception):
    """A problem with what the user gave us (a path, a file, a model folder): the command line
    prints its message as one line and exits non-zero, without a traceback."""
