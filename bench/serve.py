"""Serving speed: requests/s, output tokens/s and time to first token of a real `nimllm serve` process
with 1, 8 and 32 clients at once, each streaming completions (greedy, a fixed prompt length) one after
another over its own HTTP connection.

    python3 bench/serve.py --device cuda --out bench/results/serve_h100.json
    python3 bench/serve.py --device cpu --new-tokens 64 --requests 2 --out bench/results/serve_cpu.json

Without --model, a model folder of the preset is built with random weights, as bench/generate.py does
(speed needs no training). Tokens are counted from each reply's `usage`; time to first token is from sending the
request to the first streamed text, so it includes waiting for a free row.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
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
from nimllm.runtime import pick_device  # noqa: E402
from nimllm.tokenizer import Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def start_server(folder: ModelFolder, args) -> tuple[subprocess.Popen, str]:
    """`nimllm serve` on a free loopback port; its URL once it says it is serving."""
    command = [sys.executable, "-m", "nimllm.cli", "serve", "--model", str(folder.root), "--port", "0",
               "--max-batch", str(args.max_batch), "--device", args.device] + (["--compile"] if args.compile else [])
    threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **threads})
    lines = []
    for line in server.stdout:
        lines.append(line)
        if line.startswith("serving "):
            threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()   # keep draining
            return server, line.split(" on ")[1].split()[0]
    raise RuntimeError("the server did not start:\n" + "".join(lines))


def stream_completion(url: str, prompt: list[int], new_tokens: int) -> dict:
    """One streamed completion: seconds to the first text, to the end, and the tokens it wrote."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    body = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    first, tokens = None, 0
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
            first = time.perf_counter() - start
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    connection.close()
    end = time.perf_counter() - start
    return {"ttft_s": first if first is not None else end, "seconds": end, "tokens": tokens}


def measure(url: str, prompts: list[list[int]], clients: int, args) -> dict:
    """`clients` threads, each sending args.requests requests one after another."""
    results: queue.Queue = queue.Queue()

    def client(i):
        for j in range(args.requests):
            results.put(stream_completion(url, prompts[(i * args.requests + j) % len(prompts)], args.new_tokens))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done = [results.get() for _ in range(results.qsize())]
    if len(done) != clients * args.requests:
        raise RuntimeError(f"{clients * args.requests - len(done)} requests failed")
    ttft = sorted(r["ttft_s"] for r in done)
    return {"clients": clients, "requests": len(done), "seconds": wall, "requests_per_s": len(done) / wall,
            "tokens_per_s": sum(r["tokens"] for r in done) / wall, "ttft_median_s": statistics.median(ttft),
            "ttft_p90_s": ttft[math.ceil(0.9 * len(ttft)) - 1], "output_tokens": sum(r["tokens"] for r in done)}


def print_table(rows: list[dict], console: Console) -> None:
    table = Table()
    for col in ("clients", "requests", "requests/s", "output tokens/s", "time to first token (median)", "p90"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["clients"]), str(r["requests"]), f"{r['requests_per_s']:.2f}", f"{r['tokens_per_s']:,.1f}",
                      f"{r['ttft_median_s'] * 1000:,.0f} ms", f"{r['ttft_p90_s'] * 1000:,.0f} ms")
    console.print(table)


def main():
    ap = common.parser(__doc__)
    common.model_options(ap)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="clients at once, one row each")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128, help="max_tokens of each request")
    ap.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    ap.add_argument("--compile", action="store_true", help="the server's --compile (a GPU's decoding step)")
    ap.add_argument("--threads", type=int, help="the server's CPU threads (OMP_NUM_THREADS; default: torch's)")
    common.device_and_out(ap, "serve")
    args = ap.parse_args()
    args.device = pick_device(args.device)
    console = common.console()

    work = Path(tempfile.mkdtemp(prefix="nimllm-bench-serve-"))
    folder = common.model_folder(args, work)
    cfg = checkpoint.load_config(folder)["model"]
    ids = Tokenizer.load(folder.tokenizer).encode(common.some_text(400_000))
    prompts = [ids[i * 997:i * 997 + args.prompt_tokens] for i in range(max(args.clients) * args.requests)]
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(args.device) if cuda else (
        f"CPU, {os.cpu_count()} cores, {args.threads or torch.get_num_threads()} server threads")
    console.print(f"{device_name} | torch {torch.__version__} | {cfg.n_layer} layers x {cfg.n_embd}, context "
                  f"{cfg.block_size}, vocab {cfg.vocab_size} | prompt {args.prompt_tokens} tokens, up to "
                  f"{args.new_tokens} new, greedy | server --max-batch {args.max_batch}")

    server, url = start_server(folder, args)
    try:
        stream_completion(url, prompts[0], 8)   # warm-up
        rows = []
        for clients in args.clients:
            rows.append(measure(url, prompts, clients, args))
            r = rows[-1]
            console.print(f"{clients} clients | {r['requests_per_s']:.2f} requests/s | {r['tokens_per_s']:,.1f} tokens/s "
                          f"| first token {r['ttft_median_s'] * 1000:,.0f} ms (median)")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print_table(rows, console)
    header = common.header(device_name, load_average_after=os.getloadavg(), model=asdict(cfg),
                           weights=args.model or "random", args=vars(args))
    console.print(f"wrote {common.write_result(args.out, {'header': header, 'rows': rows})}")


if __name__ == "__main__":
    main()
