"""The control set: the model's own greedy answers to a few dozen chat and agent prompts, stored when
it is trained (`control.json` in the model folder), so that every memory update can be checked
against them. An update that changes answers to things it was not about (one chat about France once
made an agent answer "Those are the first lines of France?" to most tasks) is scaled back or not
kept (nimllm/memory.py).

An answer is "kept" when the model, fed the prompt and the stored answer, still ranks each stored
token first: exactly when its greedy answer is still the stored one, for the price of one batched
forward pass instead of a decode.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from nimllm.fileio import atomic_write
from nimllm.generate import Decoder, generate_batch
from nimllm.lessons import batch
from nimllm.model import GPT
from nimllm.tokenizer import Tokenizer
from nimllm.turns import agent_mode, turn_stops

CHAT_PROMPTS = [
    "hello", "Hi, how are you today?", "What can you do?", "thank you", "good night",
    "What is the capital of France?", "Tell me a story.", "How many days are in a week?", "Who wrote Hamlet?",
    "What is two plus two?", "Can you help me with something?", "What day is it?", "I'm bored.",
    "What is the weather like?", "Do you like music?", "Tell me a joke.", "What should I cook tonight?",
    "How do I make tea?", "What is the meaning of life?", "Write a short poem about the sea.",
    "What is the largest ocean?", "What colour is the sky?", "Name a fruit.", "What time is it?",
]
# (nothing about the user or the model itself: "what is my name?" is what a chat may rightly change)
AGENT_PROMPTS = [
    "how many .py files are there?", "list the files here", "what is in the docs folder?",
    "count the lines in notes.txt", "show the first 3 lines of readme.md", "what is the date today?",
    "which files mention TODO?", "how big is the folder src?", "are there uncommitted changes?",
    "what was the last commit?", "create a folder called archive", "sort names.txt",
    "how many words are in report.txt?", "where is config.json?", "what time is it?", "find all .md files",
]
MAX_TOKENS = 24
MIN_MARGIN = 0.05   # logits: a first choice closer to the second than this is a tie


def make_control(model: GPT, tokenizer: Tokenizer) -> dict:
    """The model's greedy answers to the control prompts, each cut at its first near-tie (where the
    decoder and a check could already disagree), so that the base model keeps all of them."""
    conversations = [[("user", p)] for p in CHAT_PROMPTS] + [agent_mode([("user", p)]) for p in AGENT_PROMPTS]
    prompts = [tokenizer.render_conversation(c, add_generation_prompt=True)[0] for c in conversations]
    stops = turn_stops(tokenizer, calls=True)
    answers = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        decoder = Decoder(model, len(prompts))
        for tokens in generate_batch(decoder, prompts, MAX_TOKENS, temperature=0.0, stop_ids=stops):
            for answer, token in zip(answers, tokens):
                if token is not None:
                    answer.append(token)
        # a row that stopped gets its stop token as the last thing to keep
        for answer, prompt in zip(answers, prompts):
            if len(answer) < MAX_TOKENS:
                answer.append(greedy_next(model, prompt + answer))
        answers = [a[:agreeing_prefix(model, p, a)] for p, a in zip(prompts, answers)]
    model.train(was_training)
    return {"prompts": CHAT_PROMPTS + AGENT_PROMPTS, "ids": prompts, "answers": answers,
            "texts": [tokenizer.decode(a) for a in answers]}


def greedy_next(model: GPT, ids: list[int]) -> int:
    device = next(model.parameters()).device
    return int(model(torch.tensor([ids[-model.cfg.block_size:]], device=device))[0, -1].argmax())


def agreeing_prefix(model: GPT, prompt: list[int], answer: list[int]) -> int:
    """How many of answer's tokens the plain forward pass, teacher-forced, also ranks first by at least
    MIN_MARGIN: where two tokens tie, any change to any weight picks between them, which says nothing
    about what an update did, so an answer is checked only up to its first near-tie."""
    device = next(model.parameters()).device
    if not answer:
        return 0
    logits = model(torch.tensor([prompt + answer[:-1]], device=device))[0, len(prompt) - 1:].float().cpu()
    top2 = logits.topk(2, dim=-1)
    decisive = (top2.indices[:, 0] == torch.tensor(answer)) & (top2.values[:, 0] - top2.values[:, 1] >= MIN_MARGIN)
    return int(decisive.int().cumprod(0).sum())


def control_batch(control: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The control prompts with their stored answers as targets, one (B, T) batch: what the check
    reads, and what an update may rehearse so that it keeps them."""
    sequences = [((p + a)[:-1], [-1] * (len(p) - 1) + a) for p, a in zip(control["ids"], control["answers"])]
    return batch(sequences, device)


@torch.no_grad()
def answers_kept(model: GPT, control: dict) -> list[bool]:
    """For each control prompt, whether the model's greedy answer is still the stored one."""
    x, y = control_batch(control, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    predicted = model(x).argmax(-1)                                           # (B, T)
    model.train(was_training)
    same = (predicted == y) | (y < 0)
    return same.all(dim=1).tolist()


def save_control(path: Path, control: dict) -> None:
    atomic_write(path, json.dumps(control, indent=1).encode())


def load_control(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
