"""`nimllm generate`: the model continues a prompt as plain text (a completion, in OpenAI's word),
streamed to the terminal as it is written. The chat and the agent take turns; this is the face
that writes text on and on."""
from __future__ import annotations

from nimllm.config import ModelFolder
from nimllm.console import printable
from nimllm.deltas import load_remembered
from nimllm.generate import fastest_decoder, generate
from nimllm.runtime import pick_device
from nimllm.tokenizer import Tokenizer
from nimllm.turns import Sampling, decode_stream, text_stops


def run_completion(folder: ModelFolder, device: str | None, s: Sampling, prompt: str) -> int:
    """Print the prompt, then the model's continuation of it up to the end of text or max_tokens;
    returns the exit code."""
    model, _ = load_remembered(folder, pick_device(device))
    tokenizer = Tokenizer.load(folder.tokenizer)
    print(prompt, end="", flush=True)
    ids = generate(model, tokenizer.encode(prompt), s.max_tokens, s.temperature, s.top_k, s.top_p, s.seed,
                   stop_ids=text_stops(tokenizer), decoder=fastest_decoder(model))
    for piece in decode_stream(tokenizer, ids):
        print(printable(piece), end="", flush=True)
    print()
    return 0
