"""The OpenAI wire format, as NimLLM speaks it: what a request may hold, errors in OpenAI's shape, tools
mapped onto the model's own tool-call turns, a reply's tokens as content, and the reply objects
(chat.completion, text_completion, whole and as stream chunks). No HTTP and no model here:
nimllm/server.py is the process that serves them.
"""
from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nimllm.tokenizer import Tokenizer
from nimllm.turns import Sampling, TurnReader


# ---- the protocol: what a request may hold (fields beyond these are ignored, as llama.cpp does) ----

class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(Body):
    name: str
    arguments: str = "{}"          # JSON text, as OpenAI sends it


class ToolCall(Body):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ContentPart(Body):
    type: str
    text: str | None = None


class Message(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class Function(Body):
    name: str
    description: str = ""
    parameters: dict = Field(default_factory=dict)


class Tool(Body):
    type: Literal["function"] = "function"
    function: Function


class Named(Body):
    name: str


class NamedToolChoice(Body):
    type: Literal["function"] = "function"
    function: Named


class StreamOptions(Body):
    include_usage: bool = False


INT64 = 2**63   # integers are signed 64-bit in OpenAI's API, and in torch's generator and SQLite


class GenerationRequest(Body):
    """What every endpoint that generates takes, each number bounded as OpenAI bounds it: one request's
    value out of range must be its own 400, never an error inside the engine that its batch shares.
    `sampling` makes of them the Sampling every face uses (nimllm/turns.py)."""
    model: str | None = None
    # a reply may run past the context (generation slides its window), so the bound is the integer's
    max_tokens: int | None = Field(None, ge=1, lt=INT64)
    max_completion_tokens: int | None = Field(None, ge=1, lt=INT64)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, lt=INT64)   # llama.cpp's and Ollama's, not OpenAI's
    stop: str | list[str] | None = Field(None, validate_default=True)   # a list once validated
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = 1

    @field_validator("temperature")
    @classmethod
    def _tiny_is_greedy(cls, temperature):
        # logits divided by 5e-324 overflow to inf, and sampling meets inf/nan; long before that (at 1e-5 a
        # token 0.001 below the likeliest is e^-100 as likely) the likeliest has it all: such a temperature is greedy
        return 0.0 if temperature is not None and temperature < 1e-5 else temperature

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n):
        if n not in (None, 1):
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop):
        stop = [stop] if isinstance(stop, str) else stop or []
        if len(stop) > 4 or not all(stop):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stop

    def sampling(self, block_size: int) -> Sampling:
        """The request's sampling; a reply without max_tokens may run as long as the context."""
        return Sampling(self.max_completion_tokens or self.max_tokens or block_size,
                        1.0 if self.temperature is None else self.temperature, self.top_k, self.top_p, self.seed)


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int]


class FeedbackRequest(Body):
    messages: list[Message] = Field(min_length=1)   # the conversation, ending with the answer rated
    feedback: Literal["good", "bad", "fix"]
    fix: str | None = None


class ApiError(Exception):
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        self.status, self.body = status, {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---- tools: the OpenAI shape <-> the model's own tool-call turns ----------------------------------

def shell_tool(tools: list[Tool]) -> str | None:
    """The request's tool that runs a shell command (exec_bash, bash, shell, ...): the first one taking
    a string `command`. What NimLLM's agent-trained models write inside a call is such a command."""
    for tool in tools:
        command = tool.function.parameters.get("properties", {}).get("command")
        if isinstance(command, dict) and command.get("type", "string") == "string":
            return tool.function.name
    return None


def text_parameter(function: Function) -> str | None:
    """Where a call's plain text goes: `command` if the function takes one, else its first string parameter."""
    properties = function.parameters.get("properties", {})
    strings = [n for n, p in properties.items() if isinstance(p, dict) and p.get("type", "string") == "string"]
    return "command" if "command" in strings else next(iter(strings), None)


def describe_tools(tools: list[Tool]) -> str:
    """The system message that tells the model its tools: names, descriptions, parameter schemas."""
    shell = shell_tool(tools)
    how = "To call a tool, write only the call: a JSON object {\"name\": ..., \"arguments\": {...}}" + (
        f", or for {shell} just the shell command." if shell else ".")
    lines = [f"{t.function.name}: {t.function.description} parameters: "
             f"{json.dumps(t.function.parameters, separators=(',', ':'))}" for t in tools]
    return "\n".join(["You can use these tools. " + how] + lines)


def tool_call_from_text(text: str, tools: list[Tool], default: str | None = None) -> tuple[str, dict] | None:
    """(name, arguments) of a call the model wrote: JSON {"name", "arguments"} naming one of the tools, as
    it says; anything else (a plain shell command, as the agent writes) as the text parameter of the
    `default` tool (the one tool_choice forces) or of the request's shell tool. None when no tool fits."""
    functions = {t.function.name: t.function for t in tools}
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("name") in functions and isinstance(parsed.get("arguments", {}), dict):
        return parsed["name"], parsed.get("arguments", {})
    target = functions.get(default or shell_tool(tools))
    if target is None:
        return None
    parameter = text_parameter(target)
    return target.name, ({parameter: text} if parameter else {})


def call_text(function: FunctionCall, tools: list[Tool]) -> str:
    """What the model writes for a call a client sends back: the bare command for the shell tool (the
    model's own form, so its turn reads back token for token), else compact JSON."""
    try:
        arguments = json.loads(function.arguments)
    except ValueError:
        arguments = function.arguments
    if function.name == shell_tool(tools) and isinstance(arguments, dict) and list(arguments) == ["command"]:
        return str(arguments["command"])
    return json.dumps({"name": function.name, "arguments": arguments}, separators=(",", ":"))


def text_of(content: str | list[ContentPart] | None) -> str:
    if isinstance(content, list):
        return "".join(part.text or "" for part in content if part.type == "text")
    return content or ""


def template_messages(messages: list[Message], tools: list[Tool]) -> list[tuple[str, str]]:
    """A request's messages as the chat template's (role, content) pairs. Each tool call is put right
    before its result, the pair the template knows; what an assistant said beside its calls is let go,
    as the agent lets it go."""
    out: list[tuple[str, str]] = []
    waiting: list[ToolCall] = []   # calls whose results have not come yet

    def flush():
        out.extend(("tool_call", call_text(c.function, tools)) for c in waiting)
        waiting.clear()

    for m in messages:
        if m.role == "tool":
            call = next((c for c in waiting if c.id == m.tool_call_id), waiting[0] if waiting else None)
            if call is not None:
                waiting.remove(call)
                out.append(("tool_call", call_text(call.function, tools)))
            out.append(("tool", text_of(m.content)))
            continue
        flush()
        if m.tool_calls:
            waiting = list(m.tool_calls)
        else:
            out.append(("system" if m.role == "developer" else m.role, text_of(m.content)))
    flush()
    return out


def forced_tool(request: ChatRequest) -> str | None:
    """Where tool_choice forces a call (the model's turn then starts with `<|tool_call|>`), the tool that a
    call in plain text goes to: the one named, or for "required" the shell tool, else the first. None
    where the model chooses."""
    choice, names = request.tool_choice, [t.function.name for t in request.tools or []]
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise ApiError(400, f"tool_choice names {choice.function.name!r}, which is not among the tools")
        return choice.function.name
    if choice == "required":
        if not names:
            raise ApiError(400, "tool_choice \"required\" needs tools")
        return shell_tool(request.tools) or names[0]
    return None


# ---- the model's tokens as a reply --------------------------------------------------------------

class Reply:
    """Tokens as the client sees them: content text, held back while it may be the start of a stop
    string, or, from a `<|tool_call|>` token on (where `calls` may be made), a call (nimllm/turns.py's
    TurnReader splits them)."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str], calls: bool = False, in_call: bool = False):
        self.reader = TurnReader(tokenizer, calls, in_call)
        self.stop = stop
        self.held = ""                 # text that may begin a stop string
        self.text = ""                 # content given out
        self.stopped = False           # a stop string was met
        self.tokens = 0

    def feed(self, token: int) -> str:
        """Content to send now for one more token ("" while it waits)."""
        self.tokens += 1
        if self.stopped:
            return ""
        piece = self.reader.feed(token)
        return self._release(self.held + piece) if piece else ""

    def flush(self) -> str:
        """The content still held, at the end."""
        if self.stopped:
            return ""
        return self._release(self.held + self.reader.flush(), final=True)

    def _release(self, text: str, final: bool = False) -> str:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, out, self.held = True, text[:min(hits)], ""
        else:
            keep = 0 if final else max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])),
                                       default=0)
            out, self.held = text[:len(text) - keep], text[len(text) - keep:]
        self.text += out
        return out

    def call_text(self) -> str | None:
        """What the model wrote as a call, even cut off by the length limit (the client decides what it is)."""
        return self.reader.call_text()


# ---- reply objects ------------------------------------------------------------------------------

class ChatShape:
    """chat.completion and chat.completion.chunk objects of an answer (nimllm/server.py's Answer: its id,
    creation time, model, content, tool call, finish reason and usage)."""

    def __init__(self, answer, include_usage: bool):
        self.answer, self.include_usage = answer, include_usage
        self.base = {"id": f"chatcmpl-{answer.id}", "created": answer.created, "model": answer.served.name}

    def chunk(self, delta: dict, reason: str | None = None) -> dict:
        return {**self.base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
            **({"usage": None} if self.include_usage else {})}

    def opening(self) -> list[dict]:
        return [self.chunk({"role": "assistant", "content": ""})]

    def piece(self, text: str) -> dict:
        return self.chunk({"content": text})

    def closing(self) -> list[dict]:
        calls = [self.chunk({"tool_calls": [{"index": 0, **self.answer.call}]})] if self.answer.call else []
        return calls + [self.chunk({}, self.answer.finish_reason())]

    def usage_chunk(self) -> dict:
        return {**self.base, "object": "chat.completion.chunk", "choices": [], "usage": self.answer.usage()}

    def whole(self) -> dict:
        answer = self.answer
        message = {"role": "assistant", "content": answer.reply.text or (None if answer.call else "")}
        if answer.call:
            message["tool_calls"] = [answer.call]
        return {**self.base, "object": "chat.completion", "usage": answer.usage(), "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason()}]}


class CompletionShape(ChatShape):
    """text_completion objects, whole or streamed."""

    def __init__(self, answer, include_usage: bool):
        super().__init__(answer, include_usage)
        self.base = {"id": f"cmpl-{answer.id}", "object": "text_completion", "created": answer.created,
                     "model": answer.served.name}

    def choice(self, text: str, reason: str | None = None) -> dict:
        return {**self.base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
                **({"usage": None} if self.include_usage else {})}

    def opening(self) -> list[dict]:
        return []

    def piece(self, text: str) -> dict:
        return self.choice(text)

    def closing(self) -> list[dict]:
        return [self.choice("", self.answer.finish_reason())]

    def usage_chunk(self) -> dict:
        return {**self.base, "choices": [], "usage": self.answer.usage()}

    def whole(self) -> dict:
        return {**self.choice(self.answer.reply.text, self.answer.finish_reason()), "usage": self.answer.usage()}


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"
