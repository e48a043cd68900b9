"""How well trained models predict what an agent writes, on agent episodes none of them trained on.

    python3 bench/agent_loss.py --model A B --episodes 600 --out bench/results/agent_loss.json

The episodes come from the corpus generator (nimllm/skills.py) at --seed, whose scratch folders
(seed x 1,000,000 on) no training corpus uses (`--agent-skills` uses seed 0). For each model: the
mean loss per token on the commands (tool calls) and on the answers, everything else in the episode
being context, in bits per byte of that text (so that models with other tokenizers compare); how
often its greedy first command is the episode's own; and of the words a first command must take from
the request (file and folder names, numbers, search words: those of the episode's own command that
the request holds), how many its first command holds. A minute for a tiny model on a CPU: a quick way
to compare two trainings of the agent corpus, at one size, before bench/agent.py asks the agent the
hand-written requests.
"""
from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # run from a checkout without installing
import common  # noqa: E402  (bench/common.py)
from nimllm import checkpoint, skills  # noqa: E402
from nimllm.config import ModelFolder, UserError  # noqa: E402
from nimllm.data import conversation  # noqa: E402
from nimllm.generate import Decoder, generate  # noqa: E402
from nimllm.tokenizer import Tokenizer  # noqa: E402

ROLES = ("system", "user", "tool", "tool_call", "assistant")
SCORED = ("tool_call", "assistant")
WORD = re.compile(r"[\w.-]*\w")   # a name, a number or a word, with its dots and dashes: taken_v3.txt, 411


def role_losses(model, tokenizer: Tokenizer, messages: list[tuple[str, str]]) -> dict[str, tuple[float, int]]:
    """For each scored role, the summed loss in nats of its tokens in the episode's first context window,
    closing tokens included, and the bytes of text they spell: one forward pass for all of them."""
    block = model.cfg.block_size + 1
    ids = tokenizer.render_conversation(messages)[0][:block]
    x, y = torch.tensor([ids[:-1]]), torch.tensor(ids[1:])
    nats = F.cross_entropy(model(x)[0].float(), y, reduction="none")                    # (T,)
    found = {}
    for role in SCORED:   # the chat template's mask with every other role as context picks this role's tokens
        mask = tokenizer.render_conversation(messages, context_roles=tuple(r for r in ROLES if r != role))[1][:block]
        picked = torch.tensor(mask[1:], dtype=torch.bool)
        text = tokenizer.hf.decode(y[picked].tolist(), skip_special_tokens=True)
        found[role] = (float(nats[picked].sum()), len(text.encode()))
    return found


def first_command(decoder: Decoder, tokenizer: Tokenizer, messages: list[tuple[str, str]]) -> str:
    prompt = tokenizer.render_conversation(messages[:2], add_generation_prompt=True)[0] + \
        [tokenizer.special("<|tool_call|>")]
    stops = [tokenizer.special("<|/tool_call|>"), tokenizer.special("<|end|>")]
    return tokenizer.decode(list(generate(decoder.model, prompt, 80, temperature=0.0, stop_ids=stops,
                                          decoder=decoder))).strip()


def words_to_copy(request: str, command: str) -> list[str]:
    """The words of `command` (two characters or more) that the request holds: what it must copy."""
    said = set(WORD.findall(request))
    return [w for w in dict.fromkeys(WORD.findall(command)) if w in said and len(w) > 1]


def score(folder: Path, episodes: list[list[tuple[str, str]]]) -> dict:
    model, _ = checkpoint.load_model(ModelFolder(folder), "cpu")
    tokenizer = Tokenizer.load(ModelFolder(folder).tokenizer)
    row = {"model": str(folder)}
    with torch.no_grad():
        losses = [role_losses(model, tokenizer, e) for e in episodes]
        for role in SCORED:
            nats, n_bytes = map(sum, zip(*(found[role] for found in losses)))
            row[f"bpb_{role}"] = round(nats / math.log(2) / max(n_bytes, 1), 4)
        decoder = Decoder(model)
        own = [next(c for r, c in e if r == "tool_call").strip() for e in episodes]
        written = [first_command(decoder, tokenizer, e) for e in episodes]
    row["first_command_exact"] = sum(w == c for w, c in zip(written, own)) / len(episodes)
    to_copy = [words_to_copy(next(t for r, t in e if r == "user"), c) for e, c in zip(episodes, own)]
    copied = sum(len(set(words) & set(WORD.findall(w))) for words, w in zip(to_copy, written))
    row["words_copied"] = copied / max(sum(map(len, to_copy)), 1)
    return row


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--model", nargs="+", type=Path, required=True, help="trained model folders")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=8, help="of the held-out episodes' folders (not 0)")
    ap.add_argument("--out", default="bench/results/agent_loss.json")
    args = ap.parse_args()
    try:
        for folder in args.model:
            checkpoint.load_config(ModelFolder(folder))
    except UserError as e:   # no model there: one line, as the nimllm commands say it
        sys.exit(f"bench/agent_loss.py: {e}")
    with tempfile.TemporaryDirectory(prefix="nimllm-agent-loss-") as work:
        path = skills.write_corpus(Path(work) / "episodes.jsonl", args.episodes, args.seed, log=lambda *_: None)
        episodes = [conversation(json.loads(line)) for line in path.read_text().splitlines()]
    rows = [score(folder, episodes) for folder in args.model]
    table = Table(title=f"{len(episodes)} held-out agent episodes (seed {args.seed})")
    for column in ("model", "bits per byte, commands", "bits per byte, answers", "first command exact",
                   "request words copied"):
        table.add_column(column)
    for r in rows:
        table.add_row(Path(r["model"]).name, f"{r['bpb_tool_call']:.4f}", f"{r['bpb_assistant']:.4f}",
                      f"{r['first_command_exact']:.1%}", f"{r['words_copied']:.1%}")
    common.console().print(table)
    common.write_result(args.out, common.header("cpu", episodes=len(episodes), seed=args.seed, rows=rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
