"""How many facts do the weights hold? Teach K made-up facts, one conversation each, exactly as
`nimllm --chat` learns them, then ask for each in a fresh process-like reload.

    python3 bench/memory.py --model ~/.nimllm/models/10m --k 1 3 10 30 --out bench/results/memory.json

For every variant (full fine-tuning, mask only, EWC only, mask and EWC: the same steps and learning
rate), facts are taught one after another into a copy of the model folder; at each K of --k the
benchmark scores greedy exact recall of every fact taught so far, on the question as taught and on a
paraphrase never trained on, the recall of the first facts (retention), and the base validation
loss in bits per byte (what the model forgot of its training text). With --fade-or-stay it also
follows a fact taught once against one taught in seven conversations (see fade_or_stay).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
import torch  # noqa: E402

from nimllm.config import MemoryConfig, ModelFolder  # noqa: E402
from nimllm.data import TokenShards  # noqa: E402
from nimllm.generate import generate  # noqa: E402
from nimllm.memory import Memory, load_delta  # noqa: E402
from nimllm.train import Runtime, evaluate  # noqa: E402

SYLLABLES = ["ka", "zor", "mi", "vel", "tun", "bra", "quo", "lis", "dre", "fen", "ox", "yam", "pel", "rhu", "sib"]
# (statement, question as taught, paraphrased question, answer) templates per kind of fact
KINDS = {
    "home": ("{name} lives in {value}.", "Where does {name} live?", "In which town is the home of {name}?"),
    "job": ("{name} works as a {value}.", "What is the job of {name}?", "What does {name} do for a living?"),
    "number": ("The favourite number of {name} is {value}.", "What is the favourite number of {name}?",
               "Which number does {name} like best?"),
}
JOBS = ["glassblower", "beekeeper", "cartographer", "ferryman", "locksmith", "tanner", "chandler"]


def made_up_word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def make_facts(k: int, seed: int) -> list[dict]:
    """K facts that no corpus holds: invented people, towns and numbers."""
    rng = random.Random(seed)
    facts = []
    for i in range(k):
        kind = list(KINDS)[i % len(KINDS)]
        name = f"{made_up_word(rng, 2)} {made_up_word(rng, 3)}"
        value = {"home": made_up_word(rng, 3), "job": rng.choice(JOBS), "number": str(rng.randint(100, 999))}[kind]
        statement, question, paraphrase = (t.format(name=name, value=value) for t in KINDS[kind])
        facts.append({"kind": kind, "statement": statement, "question": question, "paraphrase": paraphrase,
                      "answer": value})
    return facts


def teach(mem: Memory, fact: dict) -> float:
    """One conversation per fact: the fact stated, a question and its answer; learned as chat does."""
    cid = mem.store.start_conversation()
    for role, text in (("user", fact["statement"]), ("assistant", f"Noted: {fact['statement']}"),
                       ("user", fact["question"]), ("assistant", fact["statement"])):
        mem.store.add_message(cid, role, text)
    mem.store.end_conversation(cid)
    return mem.learn([cid], log=lambda *_: None).seconds


def recalls(mem: Memory, fact: dict, question_key: str) -> bool:
    ids, _ = mem.tokenizer.render_conversation([("user", fact[question_key])], add_generation_prompt=True)
    reply = mem.tokenizer.decode(list(generate(mem.model, ids, 24, temperature=0,
                                               stop_ids=[mem.tokenizer.special("<|end|>")])))
    return fact["answer"].lower() in reply.lower()


@contextmanager
def scratch_memory(source: ModelFolder, mcfg: MemoryConfig, device: str):
    """The model's Memory in a throwaway copy of its folder, with no conversations yet."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = ModelFolder(Path(tmp) / "model")
        shutil.copytree(source.root, folder.root, ignore=shutil.ignore_patterns(
            "conversations.sqlite*", "delta-*", "train_state.safetensors"))
        yield Memory(folder, device, mcfg)


def run_variant(source: ModelFolder, name: str, mcfg: MemoryConfig, facts: list[dict], ks: list[int],
                device: str) -> list[dict]:
    rows = []
    with scratch_memory(source, mcfg, device) as mem:
        val = TokenShards(mem.folder.root / mem.config["corpora"][-1]["data"], "val")
        rt = Runtime(mem.device)
        base_bpb = evaluate(mem.model, val, rt, 8, 65536)["bpb"]
        seconds = []
        for i, fact in enumerate(facts, 1):
            seconds.append(teach(mem, fact))
            if i in ks:
                fresh = Memory(mem.folder, device, mcfg)   # what a new chat would load
                taught = facts[:i]
                rows.append({
                    "variant": name, "k": i, **asdict(mcfg),
                    "recall": sum(recalls(fresh, f, "question") for f in taught) / i,
                    "paraphrase_recall": sum(recalls(fresh, f, "paraphrase") for f in taught) / i,
                    "first_5_recall": sum(recalls(fresh, f, "question") for f in taught[:5]) / min(5, i),
                    "last_recall": float(recalls(fresh, taught[-1], "question")),
                    "base_val_bpb": evaluate(fresh.model, val, rt, 8, 65536)["bpb"], "base_val_bpb_before": base_bpb,
                    "update_seconds_median": statistics.median(seconds), "update_seconds_first": seconds[0]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def retained(mem: Memory, delta_ids: list[int]) -> float:
    """How much of these memories' change is still in the weights: the projection of (weights - base)
    on their summed delta, 1 = all of it, 0 = snapped back to the base model."""
    params = dict(mem.model.named_parameters())
    total = {}
    for d in delta_ids:
        for n, (idx, vals) in load_delta(mem.folder.root / mem.store.delta(d).file).items():
            flat = total.setdefault(n, torch.zeros(params[n].numel()))
            flat.index_add_(0, idx, vals)
    along = sum(((params[n].detach().view(-1).cpu() - mem.anchor[n].view(-1).cpu()) * v).sum() for n, v in total.items())
    return float(along / sum((v * v).sum() for v in total.values()))


def fade_or_stay(source: ModelFolder, name: str, mcfg: MemoryConfig, device: str, n: int = 30, seed: int = 1) -> dict:
    """One-off changes fade, consistent ones stay? Fact R is taught in 7 conversations (every third,
    up to the 20th), fact O1 once at the start and O2 once at the 19th, made-up filler facts in the
    rest. After each conversation: recall of each, and the share of its change still in the weights."""
    facts = make_facts(n + 2, seed)
    repeated, once, late_once, fillers = facts[0], facts[1], facts[2], iter(facts[3:])
    curve = []
    with scratch_memory(source, mcfg, device) as mem:
        deltas = {"R": [], "O1": [], "O2": []}
        for t in range(n):
            which, fact = (("O1", once) if t == 0 else ("O2", late_once) if t == 18 else
                           ("R", repeated) if t % 3 == 1 and t < 20 else ("filler", next(fillers)))
            teach(mem, fact)
            if which in deltas:
                deltas[which].append(mem.applied[-1])
            curve.append({"conversation": t + 1, "taught": which, **{
                f"{k}_recall": float(recalls(mem, f, "question")) for k, f in
                (("R", repeated), ("O1", once), ("O2", late_once))}, **{
                f"{k}_retained": retained(mem, ids) if ids else None for k, ids in deltas.items()}})
            print(json.dumps({"fade_or_stay": name, **curve[-1]}), flush=True)
    return {"variant": name, **asdict(mcfg), "curve": curve}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained model folder (it is copied, never changed)")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 3, 10, 30])
    ap.add_argument("--variants", nargs="+", default=["full", "mask", "ewc", "mask+ewc"])
    ap.add_argument("--steps", type=int, default=MemoryConfig.steps)
    ap.add_argument("--lr", type=float, default=MemoryConfig.lr)
    ap.add_argument("--mask-fraction", type=float, default=MemoryConfig.mask_fraction)
    ap.add_argument("--ewc-lambda", type=float, default=MemoryConfig.ewc_lambda)
    ap.add_argument("--text", choices=["conversation", "exchanges"], default=MemoryConfig.text)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default=MemoryConfig.optimizer)
    ap.add_argument("--replay", type=int, default=MemoryConfig.replay_sequences,
                    help="base-corpus windows rehearsed in each update")
    ap.add_argument("--rehearse", type=int, default=MemoryConfig.rehearse_conversations,
                    help="earlier conversations rehearsed in each update")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fade-or-stay", type=int, nargs="?", const=30, default=0, metavar="N",
                    help="also teach one fact once and another seven times among fillers, N (>= 21, "
                         "default 30) conversations in all, and follow both")
    ap.add_argument("--device")
    ap.add_argument("--out", default="bench/results/memory.json")
    args = ap.parse_args()

    source = ModelFolder(Path(args.model).expanduser().resolve())
    facts = make_facts(max(args.k), args.seed)
    base = MemoryConfig(steps=args.steps, lr=args.lr, mask_fraction=args.mask_fraction, ewc_lambda=args.ewc_lambda,
                        text=args.text, optimizer=args.optimizer, replay_sequences=args.replay,
                        rehearse_conversations=args.rehearse)
    variants = {"full": replace(base, mask_fraction=1.0, ewc_lambda=0.0), "mask": replace(base, ewc_lambda=0.0),
                "ewc": replace(base, mask_fraction=1.0), "mask+ewc": base}
    start = time.time()
    rows = [r for v in args.variants for r in run_variant(source, v, variants[v], facts, sorted(args.k), args.device)]
    fades = [fade_or_stay(source, v, variants[v], args.device, args.fade_or_stay) for v in args.variants] if args.fade_or_stay else []

    console = Console()
    console.print(capacity_table(rows, f"facts held by {source.root.name} (steps {args.steps}, lr {args.lr}, mask "
                                       f"{args.mask_fraction:.0%}, EWC lambda {args.ewc_lambda} on a mean-1 Fisher, "
                                       f"text {args.text}, replay {args.replay})"))
    for fade in fades:
        console.print(fade_table(fade))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(source.root), "device": str(args.device), "seconds": time.time() - start,
                               "facts": facts, "rows": rows, "fade_or_stay": fades}, indent=2) + "\n")


def capacity_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("variant", "K", "recall", "paraphrase", "first 5", "last", "base bpb (before)", "update s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(r["variant"], str(r["k"]), f"{r['recall']:.0%}", f"{r['paraphrase_recall']:.0%}",
                      f"{r['first_5_recall']:.0%}", f"{r['last_recall']:.0%}",
                      f"{r['base_val_bpb']:.3f} ({r['base_val_bpb_before']:.3f})", f"{r['update_seconds_median']:.2f}")
    return table


def fade_table(fade: dict) -> Table:
    table = Table(title=f"fade or stay ({fade['variant']}): recall and share of the change still in the weights")
    for col in ("after conversation", "taught", "R recall", "R kept", "O1 recall", "O1 kept", "O2 recall", "O2 kept"):
        table.add_column(col, justify="right")
    show = lambda v: "" if v is None else f"{v:.2f}"   # noqa: E731
    for c in fade["curve"]:
        if c["conversation"] in (1, 2, 5, 10, 19, 20, 22, 25, 30):
            table.add_row(str(c["conversation"]), c["taught"], show(c["R_recall"]), show(c["R_retained"]),
                          show(c["O1_recall"]), show(c["O1_retained"]), show(c["O2_recall"]), show(c["O2_retained"]))
    return table


if __name__ == "__main__":
    main()
