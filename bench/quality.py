"""Training quality at equal wall clock: nanoGPT's character-level recipe and `nimllm --train` side by
side, on texts of different kinds, scored on the same held-out characters in bits per byte.

    python3 bench/quality.py --nanogpt ~/src/nanoGPT --device cuda --out bench/results/quality_h200.json
    python3 bench/quality.py --nanogpt ~/src/nanoGPT --device cpu --variant "--preset 10m" --out ...

Texts (--texts):
- `shakespeare`: tinyshakespeare from ../shared/data (1.1 MB of verse), one file, or its first SIZE
  characters (`shakespeare:0.2MB`: a small text, to see a long run learn it by heart);
- `python`: the Python standard library's own .py files (the top-level ones first), the first 3 MB of
  them or `python:30MB`, a folder;
- `notes`: the Python language reference as pydoc ships it, one Markdown file per topic (0.46 MB), a
  folder.
Each is split as nanoGPT's prepare.py splits tinyshakespeare: the first 90% of its characters are
trained on, the last 10% held out (for a folder: the files before the cut, and the first part of
the file it falls in).

For each text:
1. nanoGPT (a checkout of github.com/karpathy/nanoGPT given by --nanogpt; none of it is part of
   NimLLM) prepares the text with its own prepare.py and trains with its own train.py and
   config/train_shakespeare_char.py, unchanged on a GPU, with its README's CPU settings on a CPU.
   Its wall clock, from the start of prepare.py to the end of train.py, is every other row's budget.
2. `nimllm --train TRAIN --time S` in a new process, as a user runs it: its own defaults, or those
   with a --variant's options; then `nimllm eval HELDOUT --json`.
nanoGPT's recipe saves its best checkpoint (whenever validation improves); it is scored here on every
held-out character once, in windows of its context, as `nimllm eval` scores every held-out token.
Without --nanogpt the budget is --seconds and the nanoGPT row is left out.
"""
from __future__ import annotations

import json
import math
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

import common  # bench/common.py
from nimllm import checkpoint
from nimllm.config import ModelFolder
from nimllm.metrics import read_metrics
from nimllm.model import GPT

REPO = common.REPO
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
PYTHON_BYTES = 3_000_000
# nanoGPT's README, "I only have a macbook": its settings for a CPU
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
               "--lr_decay_iters=2000", "--dropout=0.0"]


# ---- the texts ---------------------------------------------------------------------------------

def documents(spec: str) -> list[tuple[str, str]]:
    """A text as (file name, content) documents, in order; `python:30MB` takes that much of the library."""
    name, _, size = spec.partition(":")
    limit = int(float(size.removesuffix("MB")) * 1e6) if size else None
    if name == "shakespeare":
        if not SHAKESPEARE.exists():
            sys.exit(f"bench/quality.py: {SHAKESPEARE} not found")
        return [("tinyshakespeare.txt", SHAKESPEARE.read_text()[:limit])]
    if name == "python":
        limit = limit or PYTHON_BYTES
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(stdlib.glob("*.py")) + sorted(p for p in stdlib.glob("*/**/*.py") if "site-packages" not in p.parts)
        docs, total = [], 0
        for path in files:
            if total >= limit:
                break
            docs.append((str(path.relative_to(stdlib)).replace("/", "--"), path.read_text(errors="replace")))
            total += len(docs[-1][1].encode())
        return docs
    if name == "notes":
        from pydoc_data.topics import topics
        return [(f"{topic}.md", f"# {topic}\n\n{text.strip()}\n") for topic, text in sorted(topics.items())]
    sys.exit(f"bench/quality.py: unknown text {spec!r} (shakespeare, python[:SIZE] or notes)")


def split(docs: list[tuple[str, str]], work: Path) -> tuple[Path, Path, str]:
    """The training part (a file, or a folder of the documents before the cut and the first part of the
    one it falls in), the held-out file, and the whole text, cut where nanoGPT's prepare.py cuts."""
    whole = "".join(text for _, text in docs)
    cut = int(len(whole) * 0.9)
    folder = work / "train"
    folder.mkdir(parents=True)
    start = 0
    for name, text in docs:
        if start >= cut:
            break
        (folder / name).write_text(text[:cut - start])
        start += len(text)
    heldout = work / "heldout.txt"
    heldout.write_text(whole[cut:])
    train = folder / docs[0][0] if len(docs) == 1 else folder
    return train, heldout, whole


# ---- nanoGPT ----------------------------------------------------------------------------------

def run_nanogpt(nanogpt: Path, whole: str, held_out_bytes: int, work: Path, device: str, options: str = "") -> dict:
    """nanoGPT's recipe on the text, in a copy of its checkout: its wall clock and its held-out score."""
    copy = work / "nanogpt"
    shutil.copytree(nanogpt, copy, ignore=shutil.ignore_patterns(".git", "out-*", "*.bin", "*.pkl", "input.txt"))
    data = copy / "data" / "text"
    data.mkdir()
    shutil.copy(copy / "data" / "shakespeare_char" / "prepare.py", data / "prepare.py")
    (data / "input.txt").write_text(whole)
    cpu = NANOGPT_CPU if device == "cpu" else []
    start = time.time()
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    train = subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char.py", "--dataset=text",
                            "--out_dir=out", *cpu, *shlex.split(options)], cwd=copy, capture_output=True, text=True)
    seconds = time.time() - start
    if train.returncode:
        sys.exit(f"bench/quality.py: nanoGPT's train.py failed:\n{train.stdout[-2000:]}{train.stderr[-2000:]}")
    return {"row": "nanoGPT char recipe", "seconds": round(seconds, 1),
            **score_nanogpt(copy, data / "val.bin", held_out_bytes, device)}


@torch.no_grad()
def score_nanogpt(copy: Path, val_bin: Path, held_out_bytes: int, device: str) -> dict:
    """The best checkpoint's loss on every held-out character once, as bits per byte of the held-out text."""
    sys.path.insert(0, str(copy))
    try:
        from model import GPT, GPTConfig   # nanoGPT's own model.py
    finally:
        sys.path.remove(str(copy))
    ckpt = torch.load(copy / "out" / "ckpt.pt", map_location=device)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.to(device).eval()
    ids = torch.from_numpy(np.fromfile(val_bin, dtype=np.uint16).astype(np.int64))
    T, B = model.config.block_size, 64
    n = (len(ids) - 1) // T * T   # whole windows, then the rest as one shorter window
    x, y = ids[:n].view(-1, T), ids[1:n + 1].view(-1, T)                       # (windows, T)
    batches = [(x[i:i + B], y[i:i + B]) for i in range(0, len(x), B)] + [(ids[n:-1][None], ids[n + 1:][None])]
    nats, scored = 0.0, 0
    for xb, yb in batches:
        if yb.numel():
            _, loss = model(xb.to(device), yb.to(device))
            nats += loss.item() * yb.numel()
            scored += yb.numel()
    return {"bits_per_byte": nats / math.log(2) / held_out_bytes, "params": model.get_num_params(),
            "iterations": ckpt["iter_num"], "best_val_loss": float(ckpt["best_val_loss"]), "scored": scored}


# ---- NimLLM ------------------------------------------------------------------------------------

def nimllm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nimllm.cli", *args], cwd=REPO, capture_output=True, text=True)


def run_nimllm(train: Path, heldout: Path, seconds: float, variant: str, device: str | None, model: Path) -> dict:
    """`nimllm --train TRAIN --time S` and `nimllm eval HELDOUT`, each a new process, as a user runs them."""
    devices = ["--device", device] if device else []
    start = time.time()
    trained = nimllm("train", str(train), "--model", str(model), "--time", f"{seconds:.0f}s", *devices,
                     *shlex.split(variant))
    wall = time.time() - start
    if trained.returncode:
        sys.exit(f"bench/quality.py: nimllm train {variant} failed:\n{trained.stdout[-2000:]}{trained.stderr[-2000:]}")
    scored = nimllm("eval", str(heldout), "--model", str(model), "--json", *devices)
    if scored.returncode:
        sys.exit(f"bench/quality.py: nimllm eval failed:\n{scored.stderr[-2000:]}")
    figures = json.loads(scored.stdout)
    with torch.device("meta"):
        params = GPT(checkpoint.load_config(ModelFolder(model))["model"]).num_params()
    said = [line for line in trained.stdout.replace("\r", "\n").splitlines() if line.startswith(("training ", "--time"))]
    # the run's own validations (its 10% of TRAIN): whether it was past its best when it ended
    validation = [[r["step"], round(r["val_bpb"], 4)] for r in read_metrics(ModelFolder(model).metrics) if "val_bpb" in r]
    return {"row": f"nimllm --time {seconds:.0f}s {variant}".strip(), "seconds": round(wall, 1),
            "bits_per_byte": figures["bpb"], "params": params, "said": said, "validation": validation}


# ---- the run -----------------------------------------------------------------------------------

def main():
    ap = common.parser(__doc__)
    ap.add_argument("--texts", nargs="+", default=["shakespeare", "python", "notes"])
    ap.add_argument("--nanogpt", type=Path, help="a checkout of github.com/karpathy/nanoGPT (its recipe's row)")
    ap.add_argument("--seconds", type=float, default=90, help="the budget where there is no nanoGPT row")
    ap.add_argument("--nanogpt-options", default="", help="changes to nanoGPT's recipe (a quick check: "
                                                          "\"--max_iters=20 --eval_interval=10\")")
    ap.add_argument("--variant", action="append", default=[""],
                    help="options of another `nimllm --train` row, e.g. \"--preset 10m\" (repeatable)")
    common.device_and_out(ap, "quality")
    args = ap.parse_args()
    if args.nanogpt and not (args.nanogpt.expanduser() / "train.py").exists():
        sys.exit(f"bench/quality.py: {args.nanogpt} is not a nanoGPT checkout (no train.py there)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []

    def save(rows: list[dict]) -> None:
        """Each row as it comes, printed and in --out (a run cut short keeps what it measured)."""
        print(json.dumps(rows[-1]), flush=True)
        common.write_result(args.out, common.header(device, nanogpt=str(args.nanogpt) if args.nanogpt else None,
                                                    rows=rows, finished=False))
    for name in args.texts:
        with tempfile.TemporaryDirectory(prefix=f"nimllm-quality-{name}-") as tmp:
            work = Path(tmp)
            train, heldout, whole = split(documents(name), work)
            found = {"text": name, "bytes": len(whole.encode()), "held_out_bytes": heldout.stat().st_size}
            budget = args.seconds
            if args.nanogpt:
                nanogpt = args.nanogpt.expanduser().resolve()
                rows.append({**found, **run_nanogpt(nanogpt, whole, found["held_out_bytes"], work, device,
                                                    args.nanogpt_options)})
                budget = rows[-1]["seconds"]
                save(rows)
            for i, variant in enumerate(args.variant):
                rows.append({**found, **run_nimllm(train, heldout, budget, variant, args.device,
                                                   work / f"nimllm-{i}")})
                save(rows)

    table = Table(title=f"held-out bits per byte at equal wall clock ({device})")
    for col in ("text", "run", "wall s", "params", "bits/byte"):
        table.add_column(col, justify="left" if col in ("text", "run") else "right")
    for r in rows:
        table.add_row(r["text"], r["row"], f"{r['seconds']:.0f}", f"{r['params'] / 1e6:.1f}M" if r.get("params") else "",
                      f"{r['bits_per_byte']:.3f}")
    common.console().print(table)
    common.write_result(args.out, common.header(device, nanogpt=str(args.nanogpt) if args.nanogpt else None,
                                                rows=rows, finished=True))


if __name__ == "__main__":
    main()
