"""The `nimllm` command: parses arguments and hands them to one of the modules. No logic here.

Both forms work: `nimllm --train FILE` (the seed's flags) and `nimllm train FILE` (subcommands).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

STARTED = time.time()   # `--time` is wall clock: it counts from here, imports and data preparation included

FLAG_FORMS = {"--train": "train", "--chat": "chat", "--agent": "agent"}   # the seed's flag spelling of each subcommand


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nimllm", description="Train a language model of your own, from scratch, on your own text.",
        epilog="examples:\n  nimllm --train mybooks.txt       train (or resume) the default model\n"
               "  nimllm generate \"Once upon a time\"\n  nimllm --chat                     talk; it learns from it\n"
               "  nimllm --agent                    a model with hands: shell commands in a sandbox\n"
               "  nimllm memory list                what it learned, to show or forget\n  nimllm info\n"
               "  nimllm serve                      an OpenAI-compatible API and a web chat on 127.0.0.1:8000\n"
               "  nimllm eval notes.txt             bits per byte of the model on a text\n"
               "  nimllm export --format hf DIR     for transformers (or --format gguf FILE for llama.cpp)\n"
               "model folders live in $NIMLLM_HOME/models (default ~/.nimllm/models)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from nimllm import __version__
    parser.add_argument("--version", action="version", version=f"nimllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--model", metavar="NAME|DIR", help="model name under $NIMLLM_HOME/models, or a folder (default: default)")
        p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
        return p

    train_options(command("train", "train a tokenizer and a model on a text file or folder, resume an interrupted "
                                   "run, or continue a trained model on a new corpus"))

    gen = command("generate", "continue a prompt with the model, streaming tokens")
    gen.add_argument("prompt", help="the text to continue")
    sampling_options(gen, 0.8)
    sampling_options(command("chat", "talk with the model; after each conversation it retrains itself on it"), 0.7)

    agent_options(command("agent", "a model with hands: it plans shell commands for your requests, runs them in a "
                                   "sandbox once you say yes, answers, and learns the tasks you approve"))

    serve_options(command("serve", "serve the model: an OpenAI-compatible API at /v1 and a web chat page at /"))

    mem = command("memory", "what the model learned from conversations: list, show ID, forget ID, reset, stats")
    mem.add_argument("action", choices=["list", "show", "forget", "reset", "stats"])
    mem.add_argument("id", nargs="?", type=int, help="a memory id (from `nimllm memory list`)")

    command("info", "describe a model folder: shape, training progress, corpora, files")

    ev = command("eval", "how well the model knows a text: bits per byte, loss per token and perplexity")
    ev.add_argument("text", help="a file or folder of text (.txt, .md, code, .jsonl with a text field)")
    ev.add_argument("--json", action="store_true", help="print the figures as one JSON object, for scripts")
    ev.add_argument("--max-tokens", type=int, help="score only the first N tokens (default: all)")
    ev.add_argument("--batch-size", type=int, default=8, help="windows scored at once (default 8)")

    export = command("export", "write the model for transformers (--format hf, a folder) or for llama.cpp and "
                               "Ollama (--format gguf, one file; ReLU² models only)")
    export.add_argument("dest", help="the folder (hf) or file (gguf) to create")
    export.add_argument("--format", choices=["hf", "gguf"], required=True)
    export.add_argument("--outtype", choices=["f32", "f16", "q8_0"], default="f32",
                        help="GGUF weight type (default f32; q8_0 is a quarter of the size)")
    return parser


def train_options(train: argparse.ArgumentParser) -> None:
    """The options of `nimllm train`."""
    train.add_argument("corpus", nargs="?", help="a file or folder of text (.txt, .md, code, .jsonl with a text "
                                                 "field); default: the Python standard library's source")
    train.add_argument("--preset", help="tiny, 10m or 103m (default: chosen by the corpus's size and the device, "
                                        "and said in one line)")
    train.add_argument("--steps", type=int, help="optimizer steps (default: a length that suits the corpus)")
    train.add_argument("--time", type=_duration, help="wall-clock budget of the whole command, e.g. 30m or 2h: "
                                                      "the steps and the schedule are fitted to it (with --steps, "
                                                      "the fewer wins)")
    train.add_argument("--vocab-size", type=int, help="BPE vocabulary size for a new model (default: chosen by the "
                                                      "corpus's size, or 8192 with --preset)")
    train.add_argument("--batch-size", type=int, dest="micro_batch", help="sequences per micro-batch")
    train.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 8)")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--activation", choices=["gelu", "relu2"], help="MLP activation of a new model")
    train.add_argument("--optimizer", choices=["adamw", "muon"],
                       help="adamw (default), or muon: Muon for the blocks' matrices and AdamW for the rest "
                            "(--low-memory keeps AdamW)")
    train.add_argument("--schedule", choices=["cosine", "wsd"],
                       help="after the warm-up: cosine decay (default), or wsd: the peak held, then a linear fall "
                            "over the last 40%% of the steps")
    train.add_argument("--qk-norm", action=argparse.BooleanOptionalAction, default=None,
                       help="RMS-normalise each head's queries and keys (a new model; it cannot be exported)")
    train.add_argument("--zero-init", action=argparse.BooleanOptionalAction, default=None,
                       help="the residual projections of a new model start at zero")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile on CUDA")
    train.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                       help="recompute activations in backward to save memory")
    train.add_argument("--low-memory", action="store_true", default=None,
                       help="fit the 103m model in under 1.8 GB of GPU memory: the optimizer steps inside backward "
                            "(no clipping, no accumulation) and activations are recomputed; slower")
    train.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=None,
                       help="the blocks' matmuls in FP8 on a GPU that has them (H100, H200, Ada); elsewhere a note")
    train.add_argument("--dropout", type=float, help="dropout of a new model (default: the preset's)")
    train.add_argument("--no-keep-best", dest="keep_best", action="store_const", const=False,
                       help="end with the last weights even where an earlier validation was lower (by default a "
                            "run that goes on past its lowest validation ends with the weights it had there)")
    train.add_argument("--bpe-dropout", type=_probability, metavar="P",
                       help="also write the training text 7 more times, each tokenized with every merge skipped "
                            "with probability P (BPE-dropout): one text, many spellings in tokens")
    train.add_argument("--n-layer", type=int, help="blocks of a new model (default: the preset's)")
    train.add_argument("--n-embd", type=int, help="width of a new model (default: the preset's)")
    train.add_argument("--n-head", type=int, help="attention heads of a new model; they divide the width")
    train.add_argument("--block-size", type=int, help="context of a new model, in tokens (default: the preset's)")
    train.add_argument("--seed", type=int)
    train.add_argument("--fresh", action="store_true", help="start over: discard this model and train a new one")
    train.add_argument("--agent-skills", nargs="?", type=int, const=5000, metavar="N",
                       help="mix N episodes of everyday shell tasks, run for real, into the corpus (default 5000), "
                            "so that the model learns to use tools in `nimllm --agent`")
    train.add_argument("--chat-skills", type=int, metavar="N",
                       help="mix N made-up chat dialogues into the corpus (on by default: 20,000, or 2,000 for the "
                            "tiny model a CPU picks), so that the model learns to converse: acknowledge, answer from "
                            "what was said, say when it does not know")
    train.add_argument("--no-chat-skills", dest="chat_skills", action="store_const", const=0,
                       help="mix in no dialogues: a plain language model of the corpus")


def sampling_options(p, temperature):
    """How generate, chat and agent draw tokens; `temperature` is each one's default."""
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=temperature, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int)


def agent_options(agent: argparse.ArgumentParser) -> None:
    """The options of `nimllm agent`: its sampling (greedy, short turns) and its commands' limits."""
    sampling_options(agent, 0.0)
    agent.set_defaults(max_tokens=64)
    agent.add_argument("--folder", default=".", help="the working folder, the only one commands may write "
                                                     "(default: the current folder)")
    agent.add_argument("--yes", action="store_true", help="run commands without asking; refused unless the "
                                                          "sandbox works (destructive commands are refused anyway)")
    agent.add_argument("--max-steps", type=int, default=5, help="commands per task before it stops (default 5)")
    agent.add_argument("--timeout", type=_duration, default=10.0, help="time limit of each command (default 10s)")


def serve_options(serve: argparse.ArgumentParser) -> None:
    """The options of `nimllm serve`."""
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                                                           "only; any other needs --api-key)")
    serve.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port")
    serve.add_argument("--api-key", default=os.environ.get("NIMLLM_API_KEY"),
                       help="require `Authorization: Bearer KEY` (default: $NIMLLM_API_KEY)")
    serve.add_argument("--remember", action="store_true", help="store every conversation and learn it once it "
                                                               "goes quiet, as the chat does")
    serve.add_argument("--quiet-after", type=_duration, default=300.0,
                       help="with --remember: learn a conversation after this long without a request (default 5m)")
    serve.add_argument("--max-batch", type=int, default=8, help="requests decoded together; more wait (default 8)")
    serve.add_argument("--compile", action="store_true", help="on a GPU, compile the decoding step: faster, at "
                                                              "the price of a longer start and of each relearning")


def _duration(text: str) -> float:
    from nimllm.config import parse_duration
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        p = float("nan")
    if not 0 <= p < 1:   # (nan too)
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability from 0 up to (not including) 1")
    return p


def normalize_argv(argv: list[str]) -> list[str]:
    """`nimllm [options] --train [FILE] [options]` becomes `nimllm train [options] [FILE] [options]`."""
    for i, arg in enumerate(argv):
        if arg in FLAG_FORMS:
            return [FLAG_FORMS[arg]] + argv[:i] + argv[i + 1:]
    return argv


def sampling(args):
    """The sampling options of generate, chat and agent."""
    from nimllm.turns import Sampling
    return Sampling(args.max_tokens, args.temperature, args.top_k, args.top_p, args.seed)


def cmd_train(args) -> int:
    from nimllm import dialogues, memory, skills
    from nimllm.config import ModelFolder
    from nimllm.data import default_corpus
    from nimllm.train import choose_defaults, run_training
    corpus = Path(args.corpus) if args.corpus else default_corpus()
    folder = ModelFolder.resolve(args.model)
    chosen = choose_defaults(
        corpus, folder, args.device, args.fresh, args.preset, args.vocab_size, args.chat_skills,
        model_flags={"activation": args.activation, "dropout": args.dropout, "qk_norm": args.qk_norm,
                     "zero_init": args.zero_init, "n_layer": args.n_layer, "n_embd": args.n_embd,
                     "n_head": args.n_head, "block_size": args.block_size},
        train_flags={"micro_batch": args.micro_batch, "grad_accum": args.grad_accum, "lr": args.lr,
                     "optimizer": args.optimizer, "schedule": args.schedule,
                     "compile": args.compile, "activation_checkpointing": args.activation_checkpointing,
                     "low_memory": args.low_memory, "fp8": args.fp8, "seed": args.seed,
                     "bpe_dropout": args.bpe_dropout, "keep_best": args.keep_best})
    mix_in = []
    if corpus.expanduser().exists():   # (if not, run_training says so before anything is written)
        if chosen.why:
            print(chosen.why)
        mix_in += [skills.corpus_for(folder.root, args.agent_skills)] if args.agent_skills else []
        mix_in += [dialogues.corpus_for(folder.root, chosen.chat_skills)] if chosen.chat_skills else []
    summary = run_training(
        corpus, folder, preset=chosen.preset, mix_in=mix_in, steps=args.steps, time_budget=args.time,
        model_overrides=chosen.model, train_overrides=chosen.train, vocab_size=chosen.vocab_size, fresh=args.fresh,
        device=args.device, started=STARTED, after_training=memory.estimated_prepare_seconds)
    if summary.get("interrupted"):
        return 130
    if summary["action"] != "done":
        memory.prepare(folder, args.device)
    return 0


def cmd_generate(args) -> int:
    from nimllm.completion import run_completion
    from nimllm.config import ModelFolder
    return run_completion(ModelFolder.resolve(args.model), args.device, sampling(args), args.prompt)


def cmd_info(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from nimllm.checkpoint import describe
    from nimllm.config import ModelFolder
    table = Table(show_header=False, box=None)
    for key, value in describe(ModelFolder.resolve(args.model)).items():
        table.add_row(f"[bold]{key}[/]", str(value))
    Console().print(table)
    return 0


def cmd_chat(args) -> int:
    from nimllm.chat import run_chat
    from nimllm.config import ModelFolder
    return run_chat(ModelFolder.resolve(args.model), args.device, sampling(args))


def cmd_agent(args) -> int:
    from nimllm.agent import run_agent
    from nimllm.config import ModelFolder
    return run_agent(ModelFolder.resolve(args.model), Path(args.folder), args.device, sampling(args), args.yes,
                     args.max_steps, args.timeout)


def cmd_memory(args) -> int:
    from nimllm.config import ModelFolder
    from nimllm.memory import run_memory
    return run_memory(ModelFolder.resolve(args.model), args.action, args.id)


def cmd_serve(args) -> int:
    from nimllm.config import ModelFolder
    from nimllm.server import run_server
    return run_server(ModelFolder.resolve(args.model), args.host, args.port, args.device, args.api_key, args.remember,
                      args.max_batch, args.quiet_after, args.compile)


def cmd_eval(args) -> int:
    import json
    from nimllm.config import ModelFolder
    from nimllm.evaluate import evaluate_text
    r = evaluate_text(ModelFolder.resolve(args.model), args.text, args.device, args.batch_size, args.max_tokens)
    print(json.dumps(r) if args.json else
          f"{r['bpb']:.4f} bits per byte | loss {r['loss']:.4f} per token | perplexity {r['perplexity']:.2f} | "
          f"{r['tokens']:,} tokens, {r['bytes']:,} bytes of {r['text']}")
    return 0


def cmd_export(args) -> int:
    from nimllm import export
    from nimllm.config import ModelFolder
    folder = ModelFolder.resolve(args.model)
    if args.format == "hf":
        out = export.export_hf(folder, Path(args.dest))
        print(f"wrote {out}: load it with transformers' AutoModelForCausalLM and AutoTokenizer.from_pretrained")
    else:
        out = export.export_gguf(folder, Path(args.dest), args.outtype)
        print(f"wrote {out} ({args.outtype}): run it with llama.cpp (llama-cli -m {out}) or import it into Ollama")
    return 0


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "info": cmd_info, "chat": cmd_chat, "agent": cmd_agent,
            "memory": cmd_memory, "serve": cmd_serve,
            "eval": cmd_eval, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(normalize_argv(sys.argv[1:] if argv is None else argv))
    if not args.command:
        parser.print_help()
        return 2
    from nimllm.config import UserError
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"nimllm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nnimllm: interrupted", file=sys.stderr)
        return 130
    except OSError as e:   # a full disk, a folder we may not write: say which, keep what was saved
        print(f"nimllm: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
