"""Generation on token ids: a KV cache, sampling, and one decoding engine. Knows nothing of text.

The model's own forward pass decodes: it takes a cache object that places the new tokens and keeps
each layer's keys and values (KVCache: sequences at one position, in chunks; DecodeStep: one token
for each row at its own position). `Decoder` runs it against a preallocated cache of B sequences in
two shapes: prefill (one sequence's window from position 0, causal attention) and step (one new
token for every sequence, each at its own position, attending to what that sequence has cached). A
step has the same shapes every time, which is what lets it be captured as a CUDA graph (compiled
first, if asked) and replayed without Python launching each kernel. The same engine runs the
weights in float32, bf16, float16 (fbgemm's CPU kernel: half the memory traffic, float32
arithmetic) or int8.

`BatchScheduler` is the one decode loop: the server's requests come and go through it;
`generate_batch` runs B prompts through it side by side (chat, agent, `nimllm generate` and the
control set), and `generate` is its one-sequence stream.

When a sequence outgrows the model's context, its window jumps forward to keep the last half of
the context and is prefilled again; the plain path (no cache) follows the same rule, so every path
produces the same tokens.
"""
from __future__ import annotations

import copy
import queue
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nimllm.model import GPT


class KVCache:
    """Keys and values of every layer for B sequences that all stand at position `pos`, written in
    place. `model(idx, cache=cache)` continues them by idx's T tokens: their keys and values go into
    positions pos..pos + T, their queries attend over everything up to there, and pos moves on by T.
    One tensor per layer, not a slice of a shared one: a compiled step then writes into it directly,
    where writing through a view copied the whole cache back every step."""

    def __init__(self, model: GPT, batch_size: int, max_len: int | None = None, dtype=None):
        cfg = model.cfg
        p = next(model.parameters())
        shape = (batch_size, cfg.n_head, max_len or cfg.block_size, cfg.head_dim)   # (B, H, T, D)
        self.k = [torch.zeros(shape, dtype=dtype or p.dtype, device=p.device) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.pos = 0

    def row(self, r: int) -> KVCache:
        """Row r alone, empty: a sequence about to be prefilled into its row of a batch's cache."""
        view = copy.copy(self)
        view.k, view.v, view.pos = [k[r:r + 1] for k in self.k], [v[r:r + 1] for v in self.v], 0
        return view

    def rotary(self, cos: torch.Tensor, sin: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        return cos[self.pos:self.pos + T], sin[self.pos:self.pos + T]                  # (T, D)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        past, T = self.pos, q.shape[2]
        self.k[layer][:, :, past:past + T], self.v[layer][:, :, past:past + T] = k, v
        keys, values = self.k[layer][:, :, :past + T], self.v[layer][:, :, :past + T]   # (B, H, past + T, D)
        if layer == len(self.k) - 1:
            self.pos += T
        if past == 0:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False                                      # one new token sees everything
        else:                                                                # a chunk after a prefix
            mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
            causal = False
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal)


class DecodeStep:
    """A cache for one batched decode step: one new token for each of the first B rows of a KVCache,
    each at its own position (B,), attending over the first `length` slots up to that position. Its
    shapes do not depend on the positions, which is what lets a step be compiled and replayed."""

    def __init__(self, cache: KVCache, positions: torch.Tensor, length: int):
        self.cache, self.positions, self.length, self.batch = cache, positions, length, len(positions)
        self.rows = torch.arange(self.batch, device=positions.device)
        key_positions = torch.arange(length, device=positions.device)
        self.visible = (key_positions <= positions[:, None])[:, None, None]            # (B, 1, 1, S)

    def rotary(self, cos: torch.Tensor, sin: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        return cos[self.positions][:, None, None], sin[self.positions][:, None, None]   # (B, 1, 1, D)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values = self.cache.k[layer], self.cache.v[layer]                         # (B, H, S, D)
        if self.batch < len(keys):   # an eager step of the first rows only (BatchScheduler's)
            keys, values = keys[:self.batch], values[:self.batch]
        keys[self.rows, :, self.positions], values[self.rows, :, self.positions] = k[:, :, 0], v[:, :, 0]
        return F.scaled_dot_product_attention(q, keys[:, :, :self.length], values[:, :, :self.length],
                                              attn_mask=self.visible)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token for each row of logits (B, V); temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) > top_p   # keep tokens until p is reached
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---- weights -----------------------------------------------------------------------------------

class Float16Linear(nn.Module):
    """A bias-free linear layer with float16 weights packed for fbgemm's CPU kernel: half the memory
    traffic of float32, while activations and sums stay float32 (relative error ~2e-4 where bf16
    weights give ~3e-3)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().cpu(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, x.shape[-1]), self.packed)
        return y.view(*x.shape[:-1], -1)


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weights and one bf16 scale per output row (weight-only
    quantization: activations stay bf16)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        weight = weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", (weight / scale[:, None]).round().to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's weight-only int8 kernel (the one gpt-fast and torchao use); 2-D bf16 activations
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).contiguous(), self.weight, self.scale)
        return y.view(*x.shape[:-1], -1)


# weights -> (dtype of activations and the KV cache, the linear layer's replacement if any)
WEIGHTS = {"float32": (torch.float32, None), "bfloat16": (torch.bfloat16, None),
           "float16": (torch.float32, Float16Linear), "int8": (torch.bfloat16, Int8Linear)}


def with_weights(model: GPT, weights: str) -> GPT:
    """The model itself for float32, else a copy with its weights in that format."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    dtype, linear = WEIGHTS[weights]
    if next(model.parameters()).dtype == dtype and linear is None:
        return model
    if linear is Float16Linear and next(model.parameters()).device.type != "cpu":
        raise ValueError("float16 weights are a CPU path (fbgemm); use bfloat16 on a GPU")
    fast = copy.deepcopy(model).to(dtype).eval()
    if linear:
        for module in fast.modules():
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    setattr(module, name, linear(child.weight))
        fast.output_layer = linear(fast.wte.weight)   # the tied output layer, in the same format
    return fast


# Prompts come in every length, and cuDNN (SDPA's first choice for bf16 on a GPU) plans each new
# length afresh, which cost ~40 ms a step when decode steps still changed shape; the others do not
PREFILL_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# ---- the engine --------------------------------------------------------------------------------

class Decoder:
    """`batch_size` sequences decoded side by side from one preallocated KV cache.

    prefill(row, ids): a sequence's window from position 0 into its row; logits of its last token.
    step(tokens, positions): one token per row at that row's position; logits (B, V). A row that
    sits a step out is fed position 0: it is finished, or about to be prefilled again.
    """

    def __init__(self, model: GPT, batch_size: int = 1, weights: str = "float32",
                 cuda_graph: bool = False, compile: bool = False):
        if compile and weights == "float16":
            raise ValueError("float16 weights (fbgemm's packed CPU kernel) cannot be compiled; they run eagerly")
        self.model = with_weights(model, weights)
        self.cfg, self.batch_size = model.cfg, batch_size
        self.cache = KVCache(self.model, batch_size)
        self.device = self.cache.k[0].device
        # attention spans the whole cache: shapes that never change let a step be a graph, and spare
        # cuDNN (SDPA's choice on a GPU) from planning anew for every length
        self.static = cuda_graph or compile or self.device.type == "cuda"
        # coordinate descent tunes the block sizes of each generated kernel: at batch 1 this took a
        # 103m step on the H100 from 340 to 274 us (bench/generate.py)
        self.run_step = torch.compile(self._step, fullgraph=True, dynamic=False,
                                      options={"coordinate_descent_tuning": True}) if compile else self._step
        self.graph = self._capture() if cuda_graph else None

    @torch.no_grad()
    def prefill(self, row: int, ids: Sequence[int]) -> torch.Tensor:
        """ids from position 0 into the cache's row `row` -> the logits of their last token (V,)."""
        idx = torch.tensor([ids], device=self.device)                                    # (1, T)
        with sdpa_kernel(PREFILL_ATTENTION):
            return self.model(idx, cache=self.cache.row(row), last_only=True)[0, -1]

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        """tokens, positions (B,) -> logits (B, V), attending to the first `length` cache slots."""
        return self.model(tokens[:, None], cache=DecodeStep(self.cache, positions, length))[:, 0]

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Record one step on static input and output buffers; replaying it launches nothing from Python."""
        B, length = self.batch_size, self.cfg.block_size
        self.graph_tokens = torch.zeros(B, dtype=torch.long, device=self.device)
        self.graph_positions = torch.zeros(B, dtype=torch.long, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():   # warm-up (and compilation) off the capture
            for _ in range(3):
                self.run_step(self.graph_tokens, self.graph_positions, length)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            self.graph_logits = self.run_step(self.graph_tokens, self.graph_positions, length)
        return graph

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """tokens (B,) on the device, positions (B,) on the host -> logits (B, V). Queued without
        waiting for the device: the positions travel from pinned memory."""
        positions_t = torch.tensor(positions)
        if self.device.type == "cuda":
            positions_t = positions_t.pin_memory().to(self.device, non_blocking=True)
        if self.graph is not None:
            self.graph_tokens.copy_(tokens)
            self.graph_positions.copy_(positions_t)
            self.graph.replay()
            return self.graph_logits
        length = self.cfg.block_size if self.static else max(positions) + 1
        return self.run_step(tokens, positions_t, length)


def fastest_decoder(model: GPT, batch_size: int = 1, compile: bool = False) -> Decoder:
    """The fastest path that bench/generate.py measured to keep the output right: bf16 weights replayed
    as a CUDA graph on a GPU, float16 weights (fbgemm) on a CPU, else the model's own float32. Holds
    a copy of the weights: build a new one after they change."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        return Decoder(model, batch_size, "bfloat16", cuda_graph=True, compile=compile)
    if device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines:
        return Decoder(model, batch_size, "float16")
    return Decoder(model, batch_size)


def new_generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()   # a fresh generator starts from one fixed seed: without this, every reply would repeat
    return generator


def context_window(ids: list[int], block: int) -> list[int]:
    """What a sequence is prefilled from: all of it while it fits the context, else its last half-context."""
    return ids if len(ids) <= block else ids[-(block // 2):]


class TokensToHost:
    """Sampled tokens (B,) on their way to the host: the copy is queued now, and read() waits for it
    alone, not for work queued on the device after it."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens
        self.host = tokens.to("cpu", non_blocking=True)      # from a GPU: into pinned memory
        self.copied = None
        if tokens.is_cuda:
            self.copied = torch.cuda.Event()
            self.copied.record()

    def read(self) -> list[int]:
        if self.copied is not None:
            self.copied.synchronize()
        return self.host.tolist()


# ---- the decode loop: requests that come and go ---------------------------------------------------

@dataclass(eq=False)
class Request:
    """One sequence to continue for a client. `emit(token, None)` receives each new token and
    `emit(None, reason)` the end: "stop" (a stop id, not emitted), "length", "cancelled" or
    "error: ..."; both are called on the scheduler's thread."""
    prompt: list[int]
    max_new_tokens: int
    emit: Callable[[int | None, str | None], None]
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    banned_ids: frozenset[int] = frozenset()   # never drawn (a chat, which has no tools, may not open a call)
    cancelled: bool = False   # set from any thread: the row is let go at the next step
    error: Exception | None = None   # what failed it, for a caller that raises it again (generate_batch)

    def cancel(self) -> None:
        self.cancelled = True

    def fail(self, e: Exception) -> None:
        """End this request alone for an exception in its own work."""
        self.error = e
        self.emit(None, failure(e))


def failure(e: Exception) -> str:
    """A request's end reason for an exception that failed it."""
    return f"error: {type(e).__name__}: {e}"


@dataclass(eq=False)
class _Row:
    request: Request
    ids: list[int]                 # prompt and tokens so far
    generator: torch.Generator
    cached: int = 0                # positions in the cache; 0 until prefilled
    new: int = 0                   # tokens emitted


class BatchScheduler:
    """Continuous batching: requests take rows of one Decoder as rows come free and give them back when
    they stop, reach their length or are cancelled; every step decodes one token for every live row.

    Each row is sampled alone with its request's settings and its own generator, so a request gets
    the tokens `generate` gives its prompt alone: the same greedy tokens, the same draws for the same
    seed (up to the rounding of a batched matrix product). Prompts and sequences that outgrow the
    context are prefilled again from their window (context_window). The device runs a step ahead:
    the next step is queued on the sampled tokens before Python reads them, so Python's bookkeeping
    hides behind the device's work (a row that has just stopped costs that step, whose result is
    dropped; one at its length is left out of it). One thread calls step(); submit() and
    Request.cancel() are safe from any.

    What is done for one row alone (making its generator, its prefill, its sampling) fails that
    request alone: it ends with "error: ..." and the others decode on. Only a failure of the step
    all rows share raises from step() (the caller then aborts them all)."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.rows: list[_Row | None] = [None] * decoder.batch_size
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.ahead: torch.Tensor | None = None   # logits of a step queued before its tokens were read

    def submit(self, request: Request) -> None:
        if not request.prompt:
            raise ValueError("generation needs at least one prompt token")
        self.waiting.put(request)

    @property
    def live(self) -> int:
        return sum(row is not None for row in self.rows)

    def replace_decoder(self, decoder: Decoder) -> None:
        """A decoder of new weights (after learning); only between requests, since the cache goes with it."""
        if self.live or decoder.batch_size != len(self.rows):
            raise RuntimeError("the decoder can change only while no request is decoding, at the same batch size")
        self.decoder, self.ahead = decoder, None

    def step(self, admit: bool = True, timeout: float | None = None) -> None:
        """Admit waiting requests into free rows (unless `admit` is off, to drain the rows before the
        weights change), then one token for every live row. With no row live it waits up to `timeout`
        seconds for a request."""
        for r, row in enumerate(self.rows):
            if row is not None and row.request.cancelled:
                self._finish(r, "cancelled")
        if admit:
            self._admit(None if self.live else timeout)
        if not self.live:
            return
        tokens = self._sample(self._logits())
        if not self.live:   # every row failed
            return
        new = TokensToHost(tokens)   # queued before the step ahead, so reading it does not wait for that step
        # rows that reach their length with this token are done: the step ahead is for the others
        going_on = [r for r, row in enumerate(self.rows) if row is not None and row.new + 1 < row.request.max_new_tokens]
        if going_on and all(self.rows[r].cached < self.decoder.cfg.block_size for r in going_on):
            self.ahead = self._step_rows(tokens, going_on)
        self._take(new.read())

    def abort(self, reason: str) -> None:
        """End every live request with `reason` (the step failed); the rows are free again."""
        for r, row in enumerate(self.rows):
            if row is not None:
                self._finish(r, reason)
        self.ahead = None

    def _admit(self, timeout: float | None) -> None:
        while None in self.rows:
            try:
                request = self.waiting.get(timeout=timeout) if timeout else self.waiting.get_nowait()
            except queue.Empty:
                return
            timeout = None
            if request.cancelled:
                request.emit(None, "cancelled")
                continue
            try:
                generator = new_generator(self.decoder.device, request.seed)
            except Exception as e:   # its seed (one past 64 bits overflows): this request's own failure
                request.fail(e)
                continue
            self.rows[self.rows.index(None)] = _Row(request, list(request.prompt), generator)

    def _width(self) -> int:
        """Rows a step computes: all of them where shapes must not change (a graph, a compiled step, a
        GPU), else up to the last live one, so one client on a CPU pays for one row, not max_batch."""
        if self.decoder.static:
            return len(self.rows)
        return max(r for r, row in enumerate(self.rows) if row is not None) + 1

    def _step_rows(self, tokens: torch.Tensor, stepping: list[int]) -> torch.Tensor:
        """One step of these rows on tokens (on the device); the other rows are fed position 0."""
        positions = [0] * self._width()
        for r in stepping:
            positions[r] = self.rows[r].cached
            self.rows[r].cached += 1
        return self.decoder.step(tokens[:len(positions)], positions)

    def _logits(self) -> torch.Tensor:
        """Every live row's next-token logits: from the step queued ahead, from a step on the tokens
        read back, or from a prefill for a row just admitted or at the end of its context."""
        block, live = self.decoder.cfg.block_size, [r for r, row in enumerate(self.rows) if row is not None]
        if self.ahead is not None:
            logits, self.ahead = self.ahead, None
            refill = [r for r in live if self.rows[r].cached == 0]
        else:
            refill = [r for r in live if self.rows[r].cached in (0, block)]
            stepping = [r for r in live if r not in refill]
            tokens = torch.tensor([row.ids[-1] if row else 0 for row in self.rows], device=self.decoder.device)
            logits = self._step_rows(tokens, stepping) if stepping else None
        width, vocab = self._width(), self.decoder.cfg.vocab_size
        if logits is None or len(logits) < width:   # rows admitted beyond those the step computed
            start = 0 if logits is None else len(logits)
            pad = torch.zeros(width - start, vocab, device=self.decoder.device, dtype=self.decoder.cache.k[0].dtype)
            logits = pad if logits is None else torch.cat([logits, pad])
        for r in refill:
            self._prefill(r, logits)
        return logits

    def _prefill(self, r: int, logits: torch.Tensor) -> None:
        """Row r's window into its row of the cache, its logits into logits[r]; a prefill that fails (its
        prompt) fails its request alone: it wrote nothing but its own row."""
        window = context_window(self.rows[r].ids, self.decoder.cfg.block_size)
        try:
            logits[r] = self.decoder.prefill(r, window)
        except Exception as e:
            self._fail(r, e)
            return
        self.rows[r].cached = len(window)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        for r, row in enumerate(self.rows[:len(logits)]):
            if row is not None and row.request.banned_ids:
                logits[r, list(row.request.banned_ids)] = float("-inf")
        tokens = logits.argmax(dim=-1)   # greedy rows, all at once
        for r, row in enumerate(self.rows[:len(logits)]):
            if row is not None and row.request.temperature > 0:
                req = row.request
                try:
                    tokens[r] = sample_next(logits[r:r + 1], req.temperature, req.top_k, req.top_p, row.generator)[0]
                except Exception as e:   # its settings met its logits (inf/nan): its row ends, not the step
                    self._fail(r, e)
        return tokens

    def _take(self, tokens: list[int]) -> None:
        for r, row in enumerate(self.rows):
            if row is None:
                continue
            if tokens[r] in row.request.stop_ids:
                self._finish(r, "stop")
                continue
            row.ids.append(tokens[r])
            row.new += 1
            row.request.emit(tokens[r], None)
            if row.new >= row.request.max_new_tokens:
                self._finish(r, "length")

    def _finish(self, r: int, reason: str) -> None:
        request, self.rows[r] = self.rows[r].request, None
        request.emit(None, reason)

    def _fail(self, r: int, e: Exception) -> None:
        request, self.rows[r] = self.rows[r].request, None
        request.fail(e)


@torch.no_grad()
def generate_batch(decoder: Decoder, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, stop_ids: Sequence[int] = (),
                   banned_ids: Sequence[int] = ()) -> Iterator[list[int | None]]:
    """For each new position, every sequence's new token, or None once it has stopped. A sequence
    stops at a stop id (not given) or after max_new_tokens, and never draws a banned id; decoding ends
    when all have. The prompts
    are requests of one BatchScheduler, all admitted at its first step; row r draws with seed + r, so
    each row samples as `generate` does its prompt alone with that seed. A failure of one row's own
    work (its prefill, its sampling) raises, as it would for that prompt alone."""
    if len(prompts) != decoder.batch_size or not all(prompts):
        raise ValueError(f"this decoder takes {decoder.batch_size} prompts of at least one token")
    scheduler, new = BatchScheduler(decoder), [None] * len(prompts)

    def emit_to(r: int) -> Callable[[int | None, str | None], None]:
        def emit(token: int | None, reason: str | None) -> None:
            if reason is None:
                new[r] = token
        return emit
    requests = [Request(list(prompt), max_new_tokens, emit_to(r), temperature, top_k, top_p,
                        None if seed is None else seed + r, frozenset(stop_ids), frozenset(banned_ids))
                for r, prompt in enumerate(prompts)]
    for request in requests:
        scheduler.submit(request)
    while scheduler.live or not scheduler.waiting.empty():
        new[:] = [None] * len(prompts)
        scheduler.step()
        failed = next((request.error for request in requests if request.error is not None), None)
        if failed is not None:
            scheduler.abort("cancelled")
            raise failed
        if any(token is not None for token in new):
            yield list(new)


@torch.no_grad()
def generate(model: GPT, prompt: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_ids: Sequence[int] = (), use_cache: bool = True, decoder: Decoder | None = None,
             banned_ids: Sequence[int] = ()) -> Iterator[int]:
    """Yield new token ids one by one after `prompt` until max_new_tokens or a stop id (not yielded),
    never a banned id.
    With the cache this runs a Decoder on the model's own weights, or the faster one given (built
    once, a CUDA graph pays for itself over many tokens); without, the model's plain forward over
    the whole window for every token."""
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    if use_cache:
        decoder = decoder or Decoder(model)
        for tokens in generate_batch(decoder, [prompt], max_new_tokens, temperature, top_k, top_p, seed, stop_ids,
                                     banned_ids):
            yield tokens[0]
        return
    device, block = next(model.parameters()).device, model.cfg.block_size
    generator = new_generator(device, seed)
    ids, start = list(prompt), 0
    for _ in range(max_new_tokens):
        if len(ids) - start > block:
            start = len(ids) - block // 2
        logits = model(torch.tensor([ids[start:]], device=device))[:, -1]
        logits[:, list(banned_ids)] = float("-inf")
        token = int(sample_next(logits, temperature, top_k, top_p, generator))
        if token in stop_ids:
            return
        ids.append(token)
        yield token
