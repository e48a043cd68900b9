"""Training quality: NimLLM's `10m` preset on tinyshakespeare, scored in bits per character on the
last 10% of the file (nanoGPT's split), against nanoGPT's character-level baby GPT (1.4697 nats per
character = 2.120 bits per character after 5000 iterations).

    python3 bench/quality.py --steps 500 1000 2000 --vocab-size 1024 8192 --out bench/results/quality.json

Each configuration trains a fresh model folder with `run_training`, exactly as `nimllm --train`
does, then scores every validation token once (non-overlapping context windows).
"""
from __future__ import annotations

import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import common  # noqa: E402  (bench/common.py)
from nimllm import checkpoint  # noqa: E402
from nimllm.config import ModelFolder  # noqa: E402
from nimllm.data import TokenShards  # noqa: E402
from nimllm.evaluate import evaluate  # noqa: E402
from nimllm.metrics import read_metrics  # noqa: E402
from nimllm.runtime import run_info, setup_runtime  # noqa: E402

NANOGPT_NATS_PER_CHAR = 1.4697
REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; .carry/ inside it is how the file travels to the GPU machine
SHAKESPEARE = next((p for p in (REPO.parent / "shared" / "data" / "tinyshakespeare.txt",
                                REPO / ".carry" / "tinyshakespeare.txt") if p.exists()), None)


def score(folder: ModelFolder, rt) -> dict:
    model, cfg = checkpoint.load_model(folder, rt.device)
    val = TokenShards(folder.root / cfg["corpora"][0]["data"], "val")
    result = evaluate(model, val, rt, batch_size=64, max_tokens=None)
    n = len(SHAKESPEARE.read_text())
    chars = n - int(n * 0.9)
    # bits per byte and per character coincide: the text is ASCII; say so if that ever changes
    assert val.num_bytes == chars, (val.num_bytes, chars)
    return {"val_bits_per_char": result["bpb"], "val_nats_per_char": result["bpb"] * math.log(2),
            "val_loss_per_token": result["loss"], "val_tokens": val.num_tokens, "val_chars": chars}


def main():
    ap = common.parser(__doc__)
    ap.add_argument("--preset", default="10m")
    ap.add_argument("--steps", type=int, nargs="+", default=[1000])
    ap.add_argument("--vocab-size", type=int, nargs="+", default=[8192])
    ap.add_argument("--activation", nargs="+", default=["gelu"])
    ap.add_argument("--dropout", type=float, nargs="+", default=[None], help="default: the preset's")
    common.device_and_out(ap, "quality")
    args = ap.parse_args()
    if SHAKESPEARE is None:
        sys.exit("tinyshakespeare.txt not found in ../shared/data or .carry/")

    from nimllm.train import run_training
    rt = setup_runtime(args.device)
    rows = []
    for steps, vocab, act, dropout in itertools.product(args.steps, args.vocab_size, args.activation, args.dropout):
        with tempfile.TemporaryDirectory() as tmp:
            folder = ModelFolder(Path(tmp) / "model")
            start = time.time()
            run_training(SHAKESPEARE, folder, preset=args.preset, steps=steps, vocab_size=vocab,
                         model_overrides={"activation": act, "dropout": dropout}, device=args.device, log=lambda *a: None)
            wall = time.time() - start
            metrics = read_metrics(folder.metrics)
            start_row = next(r for r in metrics if r.get("event") == "start")
            train_cfg, model_cfg = start_row["train"], start_row["model"]
            row = {"preset": args.preset, "steps": steps, "vocab_size": vocab, "activation": act,
                   "dropout": model_cfg["dropout"],
                   "train_seconds": max(r.get("elapsed_s", 0) for r in metrics), "wall_seconds": wall,
                   "tokens_seen": steps * train_cfg["micro_batch"] * train_cfg["grad_accum"] * model_cfg["block_size"],
                   "best_periodic_val_loss": min(r["val_loss"] for r in metrics if "val_loss" in r),
                   **score(folder, rt)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    table = Table(title=f"{args.preset} on tinyshakespeare, val = last 10% ({rt.device})")
    for col in ("steps", "vocab", "act", "dropout", "train s", "tokens seen", "bits/char", "nats/char", "vs nanoGPT 2.120"):
        table.add_column(col, justify="right")
    ref_bits = NANOGPT_NATS_PER_CHAR / math.log(2)
    for r in rows:
        table.add_row(str(r["steps"]), str(r["vocab_size"]), r["activation"], str(r["dropout"]), f"{r['train_seconds']:.0f}",
                      f"{r['tokens_seen'] / 1e6:.1f}M", f"{r['val_bits_per_char']:.3f}", f"{r['val_nats_per_char']:.4f}",
                      f"{r['val_bits_per_char'] - ref_bits:+.3f}")
    Console().print(table)
    common.write_result(args.out, {"run": run_info(rt), "reference_nats_per_char": NANOGPT_NATS_PER_CHAR, "rows": rows})


if __name__ == "__main__":
    main()
