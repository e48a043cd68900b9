"""What the benchmarks share: the start and end of their command line, the model the speed
benchmarks time when none is given, and how a result is headed and written.

Each benchmark runs as a script (`python3 bench/NAME.py`), so this folder is on its path and
`from common import ...` finds this file.
"""
from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from nimllm import checkpoint  # noqa: E402
from nimllm.config import PRESETS, MemoryConfig, ModelFolder, TrainConfig, memory_config  # noqa: E402
from nimllm.model import GPT  # noqa: E402
from nimllm.runtime import git_commit  # noqa: E402
from nimllm.tokenizer import Tokenizer  # noqa: E402


# ---- the command line --------------------------------------------------------------------------

def parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line, its module docstring (usage examples included) as the help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def device_and_out(ap: argparse.ArgumentParser, name: str) -> None:
    """The last two options of most benchmarks: where to run, and the result's file."""
    ap.add_argument("--device")
    ap.add_argument("--out", default=f"bench/results/{name}.json")


def model_options(ap: argparse.ArgumentParser) -> None:
    """A trained model folder, or the preset whose random weights model_folder builds."""
    ap.add_argument("--preset", default="103m")
    ap.add_argument("--model", help="a trained model folder (default: random weights of the preset)")
    ap.add_argument("--vocab-size", type=int, default=8192, help="of the random model's tokenizer")


# ---- the model timed ---------------------------------------------------------------------------

def some_text(n_bytes: int) -> str:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return "".join(p.read_text(errors="replace") for p in files)[:n_bytes]


def random_model_folder(root: Path, preset: str, vocab_size: int) -> ModelFolder:
    folder = ModelFolder(root)
    root.mkdir(parents=True)
    tokenizer = Tokenizer.train([some_text(500_000)], vocab_size=vocab_size)
    tokenizer.save(folder.tokenizer)
    cfg = replace(PRESETS[preset].model, activation="relu2", dropout=0.0,
                  vocab_size=-(-tokenizer.vocab_size // 64) * 64)
    torch.manual_seed(0)
    checkpoint.save_config(folder, cfg, TrainConfig(), preset, [])
    checkpoint.save_weights(folder, GPT(cfg), 0)
    return folder


def memory_config_of(folder: Path, **changes) -> MemoryConfig:
    """The memory settings a chat gives the model in `folder` (its preset's), with `changes`."""
    return memory_config(checkpoint.load_config(ModelFolder(folder)).get("preset"), **changes)


def model_folder(args, work: Path) -> ModelFolder:
    """The folder of --model, or a new one in `work` with random weights of --preset (speed needs no training)."""
    return ModelFolder(Path(args.model).resolve()) if args.model else random_model_folder(
        work / "model", args.preset, args.vocab_size)


# ---- the result --------------------------------------------------------------------------------

def console() -> Console:
    """The console the tables print to: in logs and CI, wide enough for a table not to wrap."""
    return Console(width=None if sys.stdout.isatty() else 160)


def header(device_name: str, **fields) -> dict:
    """What every result records of its run: the device, torch, the commit and the date; then `fields`."""
    return {"device": device_name, "torch": torch.__version__, "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}


def write_result(out: str | Path, result: dict, indent: int = 2) -> Path:
    """The result as JSON at `out`, its folder made if need be."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=indent) + "\n")
    return out
