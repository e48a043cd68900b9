"""nimllm/turns.py with a real tokenizer trained on real text: sampling, stop ids, fitting a talk to the
context, UTF-8-safe streaming, and reading a turn (an answer or a tool call) as its tokens arrive."""
import dataclasses
import random

import pytest

from nimllm.api import ChatRequest, CompletionRequest, Reply
from nimllm.tokenizer import SPECIAL_TOKENS
from nimllm.turns import (AGENT_MODE, Sampling, TextStream, TurnReader, context_budget, decode_stream, fit_context, fit_prompt,
                          read_turn, text_stops, turn_bans, turn_stops)

# characters of two to four bytes, rare enough in the training text that byte-level BPE keeps them in pieces
WIDE = "naïve café — 日本語 ☃ emoji 🙂 family 👩‍👩‍👧 Ωμέγα"


def special(tok, *names):
    return [tok.special(n) for n in names]


def cut_characters(tok, ids) -> int:
    """How many of these tokens end inside a UTF-8 character."""
    return sum(tok.decode(ids[:i]).endswith("\ufffd") for i in range(1, len(ids)))


# ---- sampling -----------------------------------------------------------------------------------

def test_sampling_is_one_frozen_dataclass_that_the_api_builds():
    s = Sampling(max_tokens=24, temperature=0.0, seed=3)
    assert (s.top_k, s.top_p) == (None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.temperature = 1.0
    assert dataclasses.replace(s, temperature=0.8) == Sampling(24, 0.8, None, None, 3)
    messages = [{"role": "user", "content": "hi"}]
    # no temperature is 1, no max_tokens runs as long as the context; max_completion_tokens wins over max_tokens
    assert ChatRequest(messages=messages).sampling(128) == Sampling(128, 1.0, None, None, None)
    assert ChatRequest(messages=messages, max_tokens=9, max_completion_tokens=5, temperature=1e-9, top_k=4,
                       top_p=0.5, seed=-2).sampling(128) == Sampling(5, 0.0, 4, 0.5, -2)
    assert CompletionRequest(prompt="x", max_tokens=7).sampling(128) == Sampling(7)


# ---- stop ids -----------------------------------------------------------------------------------

def test_a_turn_ends_at_any_special_token_but_the_call_where_calls_may_be_made(tok):
    assert turn_stops(tok) == frozenset(range(len(SPECIAL_TOKENS)))
    assert turn_stops(tok, calls=True) == frozenset(range(len(SPECIAL_TOKENS))) - {tok.special("<|tool_call|>")}
    assert set(special(tok, "<|end|>", "<|/tool_call|>", "<|endoftext|>")) <= turn_stops(tok, calls=True)
    assert text_stops(tok) == {tok.eot_id}
    # a turn that may make no call may not open one: it answers in words instead of stopping empty
    assert turn_bans(tok) == {tok.special("<|tool_call|>")} and turn_bans(tok, calls=True) == frozenset()


# ---- fitting the context ------------------------------------------------------------------------

def test_fit_context_keeps_the_most_recent_messages_that_fit():
    turns = [[3, 10, 11, 5], [4, 12, 5], [3, 13, 14, 15, 5]]   # role token, content, end
    assert fit_context(turns, 100) == [3, 10, 11, 5, 4, 12, 5, 3, 13, 14, 15, 5]
    assert fit_context(turns, 8) == [4, 12, 5, 3, 13, 14, 15, 5]
    assert fit_context(turns, 7) == [3, 13, 14, 15, 5]            # an older message drops out whole
    assert fit_context(turns, 3) == [3, 15, 5]                     # the newest alone is too long: its tail
    assert fit_context([], 10) == []


def test_fit_context_can_keep_the_first_messages_in_half_the_budget():
    mode, request, steps = [2, 7, 5], [3, 10, 11, 5], [[4, 20 + i, 5] for i in range(10)]
    turns = [request] + steps
    assert fit_context(turns, 100, keep=1) == fit_context(turns, 100)     # all fits: the same
    assert fit_context(turns, 10, keep=1) == request + [4, 28, 5, 4, 29, 5]   # the request, the latest
    assert fit_context([mode] + turns, 14, keep=2) == mode + request + [4, 28, 5, 4, 29, 5]   # both stay
    long_request = [3, *range(100, 120), 5]
    assert fit_context([long_request] + steps, 10, keep=1) == [3, 117, 118, 119, 5, 4, 29, 5]   # its end
    assert fit_context([mode, long_request] + steps, 16, keep=2) == mode + [3, 117, 118, 119, 5, 4, 28, 5, 4, 29, 5]
    assert fit_context([long_request], 10, keep=1) == fit_context([long_request], 10)


def test_fit_prompt_is_the_template_when_it_fits_and_keeps_the_mode_and_request_when_asked(tok):
    talk = [("system", AGENT_MODE), ("user", "how many files are here?"), ("tool_call", "ls | wc -l"), ("tool", "[exit 0]\n3"),
            ("assistant", f"There are 3. {WIDE}")]
    whole = tok.render_conversation(talk, add_generation_prompt=True)[0]
    assert fit_prompt(tok, talk, len(whole)) == fit_prompt(tok, talk, len(whole), keep=2) == whole
    long_talk = talk[:2] + [m for i in range(20) for m in [("tool_call", f"cat notes{i}.txt"), ("tool", f"note {i}")]]
    budget = context_budget(256, 64)
    kept = fit_prompt(tok, long_talk, budget, keep=2)
    assert len(kept) <= budget and tok.decode(kept).startswith(f"<|system|>{AGENT_MODE}<|end|><|user|>how many files are here?<|end|>")
    assert tok.decode(kept).endswith("<|tool_result|>note 19<|end|><|assistant|>")
    assert "<|user|>" not in tok.decode(fit_prompt(tok, long_talk, budget))   # without: it drops out
    assert context_budget(128, 16) == 112 and context_budget(128, 1000) == 64


# ---- UTF-8-safe streaming -----------------------------------------------------------------------

def test_characters_cut_between_tokens_come_out_whole(tok):
    ids = tok.encode(WIDE)
    assert cut_characters(tok, ids) >= 5   # the test means something: many characters span tokens
    pieces = list(decode_stream(tok, ids))
    assert "".join(pieces) == WIDE and all(pieces) and not any("\ufffd" in p for p in pieces)
    stream = TextStream(tok)
    fed = [stream.feed(t) for t in ids]
    assert "".join(fed) + stream.flush() == WIDE and "" in fed     # some tokens wait for the next
    stream = TextStream(tok)
    assert stream.feed(tok.encode("☃")[0]) == "" and stream.flush() == "\ufffd"   # cut off at the end: said so


# ---- reading a turn -----------------------------------------------------------------------------

def test_read_turn_reads_calls_and_answers_and_reports_garbage(tok):
    call, close, end, user = special(tok, "<|tool_call|>", "<|/tool_call|>", "<|end|>", "<|user|>")
    assert read_turn(tok, [call, *tok.encode("ls -la"), close])[:2] == ("call", "ls -la")
    assert read_turn(tok, [*tok.encode("I will look"), call, *tok.encode("ls"), close])[:2] == ("call", "ls")
    assert read_turn(tok, [*tok.encode(" There are 3. "), end]) == ("answer", "There are 3.", " There are 3. <|end|>")
    assert read_turn(tok, [*tok.encode(WIDE), tok.eot_id])[:2] == ("answer", WIDE)
    malformed = {"no end": [call, *tok.encode("ls")], "empty command": [call, close], "empty answer": [end],
                 "special inside": [call, *tok.encode("ls"), user, close], "stray": [*tok.encode("hi"), user, end],
                 "stray at the end": [*tok.encode("hi"), user], "runs out": tok.encode("garbage garbage"),
                 "nothing": []}
    reasons = {name: read_turn(tok, ids) for name, ids in malformed.items()}
    assert all(turn.kind == "malformed" for turn in reasons.values()), reasons
    assert reasons["stray at the end"].text == "a stray special token"
    assert reasons["runs out"].text == "no end before the token limit" and reasons["runs out"].raw == "garbage garbage"


def chunks(ids, seed):
    """The ids in runs of 1 to 4, as the server's engine hands them over."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(ids):
        n = rng.randint(1, 4)
        out.append(ids[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("seed", range(5))
def test_a_tool_call_split_across_stream_chunks_is_read_whole(tok, seed):
    call, close = special(tok, "<|tool_call|>", "<|/tool_call|>")
    said, command = "Let me look — ☃ ", "grep -c 'café' notes.txt"
    ids = [*tok.encode(said), call, *tok.encode(command), close]
    reader, reply, content, sent = TurnReader(tok), Reply(tok, [], calls=True), [], []
    for run in chunks(ids, seed):
        content.append("".join(reader.feed(t) for t in run))
        sent.append("".join(reply.feed(t) for t in run))
    assert "".join(content) + reader.flush() == said == "".join(sent) + reply.flush() == reply.text
    assert reader.call_text() == reply.call_text() == command
    assert reader.turn() == ("call", command, tok.decode(ids))


def test_the_lenient_call_text_and_the_strict_turn(tok):
    """The server hands a client whatever a call holds, even one the length limit cut off; the agent
    runs only a call that closed. Where the prompt opened the call (forced), the turn starts inside it."""
    reader = TurnReader(tok, in_call=True)
    for t in tok.encode("ls ☃"):
        assert reader.feed(t) == ""
    assert reader.call_text() == "ls ☃" and reader.turn().text == "a command with no end"
    plain = TurnReader(tok, calls=False)   # a completion: the call token is text like any other
    text = "".join(plain.feed(t) for t in [*tok.encode("a"), tok.special("<|tool_call|>"), *tok.encode("b")])
    assert text + plain.flush() == "a<|tool_call|>b" and plain.call_text() is None
