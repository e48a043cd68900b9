"""Generation speed: greedy decode tokens/s and time to first token at batch 1, NimLLM's engine
against `transformers`' generate on the exported model (the reference, measured in the same run) and
llama.cpp on the exported GGUF where it is installed (bench/llama_cpp, CPU); then tokens/s with
several sequences decoded together.

    python3 bench/generate.py --device cuda --out bench/results/generate_h100.json
    python3 bench/generate.py --device cpu --threads 2 --out bench/results/generate_cpu.json

Without --model, a model folder of the preset is built with random weights (speed needs no
training): a BPE tokenizer trained on Python's own source, and squared ReLU so that llama.cpp runs
its GGUF. Each row also says for how many of its tokens it agrees with NimLLM's float32 path; with
random weights the logits are nearly flat, so rows that round differently part early.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import common  # noqa: E402  (bench/common.py)
from nimllm import checkpoint  # noqa: E402
from nimllm.config import ModelFolder  # noqa: E402
from nimllm.export import export_gguf, export_hf  # noqa: E402
from nimllm.generate import Decoder, generate_batch  # noqa: E402
from nimllm.runtime import pick_device  # noqa: E402
from nimllm.tokenizer import Tokenizer  # noqa: E402

LLAMA_CPP = Path(__file__).resolve().parent / "llama_cpp"


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_nimllm(decoder: Decoder, prompts: list[list[int]], new_tokens: int) -> dict:
    list(generate_batch(decoder, prompts, 4, temperature=0))                  # warm-up
    sync(str(decoder.device))
    start, first, tokens = time.perf_counter(), None, []
    for step in generate_batch(decoder, prompts, new_tokens, temperature=0):  # each step ends in a sync
        first = first or time.perf_counter()
        tokens.append(step[0])
    end = time.perf_counter()
    return {"ttft_s": first - start, "tokens_per_s": len(prompts) * (len(tokens) - 1) / (end - first),
            "tokens": tokens}


def time_transformers(hf, prompt: list[int], new_tokens: int, device: str) -> dict:
    """One generate call, clocked by a streamer: it is handed the prompt, then each new token."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    ids = torch.tensor([prompt], device=device)

    def run(n):
        clock = Clock()
        sync(device)
        start = time.perf_counter()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=1, streamer=clock)
        return start, clock.times[1:], out[0, len(prompt):].tolist()

    run(4)                                                                     # warm-up
    start, times, tokens = run(new_tokens)
    return {"ttft_s": times[0] - start, "tokens_per_s": (len(times) - 1) / (times[-1] - times[0]), "tokens": tokens}


def time_llama_cpp(gguf: Path, prompt: list[int], new_tokens: int, threads: int) -> dict:
    request = {"model": str(gguf), "prompts": [prompt[:4], prompt], "max_tokens": new_tokens, "threads": threads}
    out = subprocess.run(["node", "greedy.mjs"], input=json.dumps(request), capture_output=True, text=True,
                         cwd=LLAMA_CPP, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    answer = json.loads(out.stdout)                                            # the first prompt warms up
    return {"ttft_s": answer["ttft_s"][1], "tokens_per_s": (new_tokens - 1) / answer["decode_s"][1],
            "tokens": answer["tokens"][1]}


def rows_to_run(args, cuda: bool) -> list[dict]:
    """(label, engine, settings, batch) of every row, the reference first."""
    rows = [{"config": f"transformers generate, {d}", "engine": "transformers", "dtype": d, "batch": 1}
            for d in (["bfloat16"] if cuda else ["float32", "bfloat16"])]
    if not cuda and (LLAMA_CPP / "node_modules" / "node-llama-cpp").exists():
        rows += [{"config": f"llama.cpp, GGUF {t}", "engine": "llama.cpp", "outtype": t, "batch": 1}
                 for t in ("f32", "q8_0")]
    paths = ([("float32", False, False), ("bfloat16", False, False), ("bfloat16", True, False),
              ("bfloat16", True, True)] if cuda else
             [("float32", False, False), ("bfloat16", False, False), ("float16", False, False), ("int8", False, False)])
    fastest = ("bfloat16", True, True) if cuda else ("float16", False, False)   # as measured
    for weights, graph, compiled in paths:
        for batch in args.batch if (weights, graph, compiled) == fastest else [1]:
            rows.append({"config": f"nimllm {weights}" + (", CUDA graph" if graph else "") + (", compiled" if compiled else ""),
                         "engine": "nimllm", "weights": weights, "cuda_graph": graph, "compile": compiled, "batch": batch})
    return [r for r in rows if not args.only or r["config"] in args.only]


def measure(row: dict, folder: ModelFolder, hf_dir: Path, prompts: list[list[int]], args) -> dict:
    device = args.device
    if row["engine"] == "transformers":
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging
        logging.disable_progress_bar()
        hf = AutoModelForCausalLM.from_pretrained(hf_dir).to(device=device, dtype=getattr(torch, row["dtype"])).eval()
        return time_transformers(hf, prompts[0], args.new_tokens, device)
    if row["engine"] == "llama.cpp":
        gguf = hf_dir.parent / f"model-{row['outtype']}.gguf"
        if not gguf.exists():
            export_gguf(folder, gguf, row["outtype"])
        return time_llama_cpp(gguf, prompts[0], args.new_tokens, args.threads)
    model, _ = checkpoint.load_model(folder, device)
    start = time.perf_counter()
    decoder = Decoder(model, row["batch"], row["weights"], row["cuda_graph"], row["compile"])
    setup = time.perf_counter() - start
    return {**time_nimllm(decoder, prompts[:row["batch"]], args.new_tokens), "setup_s": setup}


def print_table(rows: list[dict], console: Console):
    table = Table()
    for col in ("config", "batch", "tokens/s", "vs transformers", "time to first token", "agrees with f32"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["config"], str(r["batch"]), f"[red]{r['error'][:60]}", "", "", "")
            continue
        table.add_row(r["config"], str(r["batch"]), f"{r['tokens_per_s']:,.1f}", f"{r['vs_reference']:.2f}x",
                      f"{r['ttft_s'] * 1000:.1f} ms", f"{r['agreement']} tokens")
    console.print(table)


def main():
    ap = common.parser(__doc__)
    common.model_options(ap)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batches for the fastest path")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    ap.add_argument("--only", nargs="+", metavar="CONFIG", help="run only the rows with these labels")
    common.device_and_out(ap, "generate")
    args = ap.parse_args()
    args.device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    cuda = args.device.startswith("cuda")
    console = common.console()

    work = Path(tempfile.mkdtemp(prefix="nimllm-bench-generate-"))
    folder = common.model_folder(args, work)
    hf_dir = export_hf(folder, work / "hf")
    cfg = checkpoint.load_config(folder)["model"]
    ids = Tokenizer.load(folder.tokenizer).encode(common.some_text(400_000))
    prompts = [ids[i * 997:i * 997 + args.prompt_tokens] for i in range(max(args.batch))]
    device_name = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {args.threads} threads"
    console.print(f"{device_name} | torch {torch.__version__} | {cfg.n_layer} layers x {cfg.n_embd}, context "
                  f"{cfg.block_size}, vocab {cfg.vocab_size}, {cfg.activation} | prompt {args.prompt_tokens} "
                  f"tokens, {args.new_tokens} new, greedy")

    rows = []
    for row in rows_to_run(args, cuda):
        try:
            row.update(measure(row, folder, hf_dir, prompts, args))
            console.print(f"{row['config']} | batch {row['batch']} | {row['tokens_per_s']:,.1f} tokens/s | "
                          f"first token {row['ttft_s'] * 1000:.1f} ms")
        except Exception as e:  # a missing kernel or an OOM costs its row, not the benchmark
            row["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            console.print(f"{row['config']} | [red]{row['error']}")
        rows.append(row)
        torch._dynamo.reset()

    reference = max((r["tokens_per_s"] for r in rows if r["engine"] == "transformers" and "error" not in r), default=None)
    exact = next((r["tokens"] for r in rows if r["config"] == "nimllm float32" and "error" not in r), [])
    for r in rows:
        if "error" not in r:
            r["vs_reference"] = r["tokens_per_s"] / reference if reference else float("nan")
            r["agreement"] = next((i for i, (a, b) in enumerate(zip(r["tokens"], exact)) if a != b),
                                  min(len(r["tokens"]), len(exact)))
    print_table(rows, console)
    header = common.header(device_name,
                           load_average_after=os.getloadavg(),   # other work on the machine slows every row
                           model=asdict(cfg), weights=args.model or "random", reference="the fastest transformers row",
                           args=vars(args))
    console.print(f"wrote {common.write_result(args.out, {'header': header, 'rows': rows})}")


if __name__ == "__main__":
    main()
