"""nimllm/api.py without a server: the OpenAI request shapes mapped onto the chat template (tools, calls and
their results), and a reply's text as it streams (stop strings held back, characters kept whole)."""
from nimllm.api import FunctionCall, Message, Reply, Tool, call_text, describe_tools, template_messages, tool_call_from_text
from test_turns import WIDE, chunks

EXEC_BASH = {"type": "function", "function": {"name": "exec_bash", "description": "Run a shell command",
                                                "parameters": {"type": "object", "properties": {
                                                    "command": {"type": "string"}}, "required": ["command"]}}}
READ_FILE = {"type": "function", "function": {"name": "read_file", "description": "Read a file",
                                               "parameters": {"type": "object", "properties": {
                                                   "path": {"type": "string"}}}}}


def test_tool_call_text_maps_onto_the_request_tools():
    tools = [Tool(**READ_FILE), Tool(**EXEC_BASH)]
    assert tool_call_from_text('{"name": "read_file", "arguments": {"path": "a.txt"}}', tools) == (
        "read_file", {"path": "a.txt"})
    assert tool_call_from_text("ls -la | wc -l", tools) == ("exec_bash", {"command": "ls -la | wc -l"})
    assert tool_call_from_text("notes.txt", tools, default="read_file") == ("read_file", {"path": "notes.txt"})
    assert tool_call_from_text('{"name": "nope", "arguments": {}}', [Tool(**READ_FILE)]) is None
    assert tool_call_from_text("ls", []) is None
    # and back: the shell tool's call is the bare command the model writes, any other compact JSON
    assert call_text(FunctionCall(name="exec_bash", arguments='{"command": "ls"}'), tools) == "ls"
    assert call_text(FunctionCall(name="read_file", arguments='{"path": "a"}'), tools) == \
        '{"name":"read_file","arguments":{"path":"a"}}'


def test_calls_and_results_are_paired_as_the_template_pairs_them():
    tools = [Tool(**READ_FILE), Tool(**EXEC_BASH)]
    calls = [{"id": "a", "type": "function", "function": {"name": "exec_bash", "arguments": '{"command": "ls"}'}},
             {"id": "b", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "x"}'}}]
    messages = [Message(**m) for m in [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look "}, {"type": "text", "text": "around"}]},
        {"role": "assistant", "content": "let me see", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "b", "content": "x's text"},
        {"role": "tool", "tool_call_id": "a", "content": "x"},
        {"role": "assistant", "content": "done"}]]
    assert template_messages(messages, tools) == [
        ("system", "be brief"), ("user", "look around"), ("tool_call", '{"name":"read_file","arguments":{"path":"x"}}'),
        ("tool", "x's text"), ("tool_call", "ls"), ("tool", "x"), ("assistant", "done")]
    described = describe_tools(tools)
    assert described.count("\n") == 2 and '"properties":{"command":{"type":"string"}}' in described


def test_reply_holds_back_what_may_start_a_stop_string(tok):
    tokenizer = tok
    reply = Reply(tokenizer, ["STOP"])
    pieces = [reply.feed(t) for t in tokenizer.encode("one ST two S")]
    assert "".join(pieces) + reply.flush() == "one ST two S" and not reply.stopped
    reply = Reply(tokenizer, ["STOP"])
    pieces = [reply.feed(t) for t in tokenizer.encode("one STOP two")]
    assert "".join(pieces) == "one " and reply.stopped and reply.flush() == ""
    reply = Reply(tokenizer, [])
    text = "naïve — ☃"   # characters cut between byte-level tokens come out whole
    assert "".join(reply.feed(t) for t in tokenizer.encode(text)) + reply.flush() == text


def test_a_stop_string_split_across_chunks_still_stops_the_reply(tok):
    text = f"{WIDE} and then STOP here"
    for seed in range(5):
        reply, sent = Reply(tok, ["STOP"]), ""
        for run in chunks(tok.encode(text), seed):
            sent += "".join(reply.feed(t) for t in run)
        assert sent + reply.flush() == f"{WIDE} and then " and reply.stopped
