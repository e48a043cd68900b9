"""`nimllm serve`: the model behind an OpenAI-compatible API, and a web chat page on top of that API.

A face: the OpenAI protocol (its shapes and the tool mapping are nimllm/api.py) in and out over HTTP,
text to token ids and back. Everything else is below it:
- one engine thread owns the model and runs every request through nimllm/generate.py's
  BatchScheduler (continuous batching on token ids); tokens come back to each request's asyncio
  queue, so requests never mix, and a client that leaves cancels its request and frees its row;
- with --remember each conversation is kept (nimllm/talks.py) and stored as it happens
  (nimllm/store.py), known by its messages: a request whose messages extend a known conversation
  continues it. Once it has been quiet for --quiet-after, the engine stops admitting requests, lets
  the rows in flight finish, and learns it with Memory.learn, exactly as a chat is learned
  (nimllm/memory.py), then decodes with the new weights. Learning and generation never touch the
  weights at the same time, and requests that arrive meanwhile wait in the queue, not in an error.
- Tool calls: the request's tools are described to the model in a system message; its
  `<|tool_call|>...<|/tool_call|>` turn comes back as OpenAI `tool_calls` (api.tool_call_from_text),
  and the calls and results a client sends back are rendered as the model's own turns (api.template_messages).
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi import Request as HTTPRequest
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from nimllm.api import (INT64, ApiError, Body, ChatRequest, ChatShape, CompletionRequest, CompletionShape,
                        FeedbackRequest, FunctionCall, GenerationRequest, Reply, Tool, call_text, describe_tools,
                        forced_tool, sse, template_messages, tool_call_from_text)
from nimllm.config import ModelFolder, UserError
from nimllm.generate import BatchScheduler, Request, failure
from nimllm.deltas import memory_history, show_memory
from nimllm.memory import Memory
from nimllm.talks import Talk, Talks
from nimllm.tokenizer import Tokenizer
from nimllm.turns import Sampling, context_budget, fit_prompt, text_stops, turn_bans, turn_stops

WEB = Path(__file__).parent / "web"
MAX_REQUEST_BYTES = 1 << 20   # far more text than any context holds; a bigger body is a mistake or an attack


async def read_body(http: HTTPRequest, cls: type[Body]) -> Body:
    """The request's JSON as `cls`: 413 past MAX_REQUEST_BYTES, 400 for anything malformed."""
    too_big = ApiError(413, f"the request is larger than {MAX_REQUEST_BYTES:,} bytes", code="request_too_large")
    if int(http.headers.get("content-length") or 0) > MAX_REQUEST_BYTES:
        raise too_big
    body = b""
    async for chunk in http.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise too_big
    try:
        return cls.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ApiError(400, f"{where + ': ' if where else ''}{first['msg']}", param=where or None) from None


# ---- who may call: clients of this machine and the server's own page, never another site's page ----

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?")   # name[:port], as Host has it


def own_names(host: str) -> frozenset[str] | None:
    """The names a request may call the server by: the loopback ones and the --host given. None (any)
    where it listens on every address: which names reach the machine there is the network's business,
    and a key is required (run_server), which no other site's page has."""
    name = host.strip("[]").lower()
    return None if every_address(name) else LOOPBACK_NAMES | {name}


def authority(text: str) -> tuple[str, int | None] | None:
    """(name, port) of a Host header or an origin's host part ("localhost:8000", "[::1]"); None if malformed."""
    match = AUTHORITY.fullmatch(text)
    return match and (match[1].strip("[]").lower(), int(match[2]) if match[2] else None)


def refusal(headers: Headers, method: str, names: frozenset[str] | None, port: int) -> ApiError | None:
    """Why a request must not reach any endpoint, if it must not. A browser lets any page send another
    site a "simple" POST (text/plain, a form) without asking first, names the page's origin in it, and
    takes a page whose name an attacker points at 127.0.0.1 (DNS rebinding) for this server's own
    origin: only the Host header tells. So the Host must be one of the server's names, an Origin the
    server's own (its names at its port: what its web chat sends), and a POST JSON, which a page of
    another origin can send only after a CORS preflight that this server never grants."""
    host = authority(headers.get("host", ""))
    if host is None:
        return ApiError(400, "the Host header is missing or malformed")
    if names is not None and host[0] not in names:
        return ApiError(421, f"this server is not {host[0]}: it answers to {', '.join(sorted(names))}",
                        code="misdirected_request")
    origin = headers.get("origin")
    if origin is not None and not own_origin(origin, names, port):
        return ApiError(403, f"refused: a page of {origin} may not use this server, only its own page may",
                        code="foreign_origin")
    if method == "POST" and headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return ApiError(415, "a POST takes a JSON body: Content-Type: application/json", code="unsupported_media_type")
    return None


def own_origin(origin: str, names: frozenset[str] | None, port: int) -> bool:
    """Whether a page's origin is the server's own: http, one of its names, its port."""
    scheme, _, rest = origin.partition("://")
    found = authority(rest)
    return scheme == "http" and found is not None and (names is None or found[0] in names) and (found[1] or 80) == port


class Guard:
    """ASGI middleware that answers a refused request (see refusal) before any endpoint or file sees it."""

    def __init__(self, app, names: frozenset[str] | None, port: int):
        self.app, self.names, self.port = app, names, port

    async def __call__(self, scope, receive, send):
        error = scope["type"] == "http" and refusal(Headers(scope=scope), scope["method"], self.names, self.port)
        await (JSONResponse(error.body, status_code=error.status) if error else self.app)(scope, receive, send)


# ---- the engine: one thread owns the model ------------------------------------------------------

class Engine:
    """The one thread that touches the weights: it steps the BatchScheduler and, with --remember,
    learns quiet conversations between batches (admissions pause, the rows in flight finish, then
    Memory.learn runs and a decoder of the new weights takes over)."""

    def __init__(self, mem: Memory, max_batch: int, talks: Talks | None, log=print, compile: bool = False):
        self.mem, self.talks, self.log, self.max_batch, self.compile = mem, talks, log, max_batch, compile
        self.scheduler = BatchScheduler(mem.decoder(max_batch, compile))
        self.outbox: list[tuple[Answer, int | None, str | None]] = []   # what a step emitted, for the event loop
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="nimllm-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        if self.talks:
            self._changing_weights(lambda: self.mem.learn_pending(self.log))
        while not self.stopping.is_set():
            quiet = self.talks.quiet() if self.talks else []
            if quiet and not self.scheduler.live:
                self._changing_weights(lambda: self._learn(quiet))
                continue
            # a failure in one row's own work ends that request alone (BatchScheduler); one in the step all
            # rows share has no single cause, and ends them all, never the server
            try:
                self.scheduler.step(admit=not quiet, timeout=0.2)
            except Exception as e:
                self.scheduler.abort(failure(e))
            self._deliver()

    def emit(self, answer: Answer, token: int | None, reason: str | None) -> None:
        """A request's token or end, from this thread; a failure is logged here, whichever row it hit."""
        if reason and reason.startswith("error"):
            self.log(f"a request failed: {reason.removeprefix('error: ')}")
        self.outbox.append((answer, token, reason))

    def _deliver(self) -> None:
        """Hand a step's tokens to the event loop in one wake-up, not one per token."""
        if not self.outbox:
            return
        batch, self.outbox = self.outbox, []
        try:
            batch[0][0].loop.call_soon_threadsafe(deliver, batch)
        except RuntimeError:   # the loop has closed (shutdown): no one is listening
            pass

    def _learn(self, talks: list[Talk]) -> None:
        for talk in talks:
            conversation = self.talks.close(talk)
            self.log(f"remembering conversation {conversation}...")
            self.mem.learn([conversation], log=self.log)

    def _changing_weights(self, learn) -> None:
        try:
            learn()
        except Exception as e:  # a damaged memory file costs that update, not the server
            self.log(f"learning failed: {type(e).__name__}: {e}")
        if (decoder := self.mem.decoder(self.max_batch, self.compile)) is not self.scheduler.decoder:   # new weights
            self.scheduler.replace_decoder(decoder)


def deliver(batch: list[tuple[Answer, int | None, str | None]]) -> None:
    for answer, token, reason in batch:
        answer.events.put_nowait((token, reason))


# ---- a reply, and its two shapes ----------------------------------------------------------------

@dataclass
class Served:
    """What every request needs: the engine, the model's name and folder, where it listens (the --host
    given and the port: what the Host and Origin headers must name) and the key."""
    engine: Engine
    name: str
    folder: ModelFolder
    host: str
    port: int
    api_key: str | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.mem.tokenizer

    @property
    def block(self) -> int:
        return self.engine.mem.model.cfg.block_size


class Answer:
    """One request's reply as it is written: its request on the engine, whose tokens arrive on an asyncio
    queue, those tokens as content (Reply), then the tool call, the finish reason and the usage. Given
    `messages` (with --remember), the conversation is stored as it goes: its new messages first, the
    reply once complete."""

    def __init__(self, served: Served, prompt: list[int], sampling: Sampling, stop_ids, reply: Reply,
                 tools: list[Tool] = (), forced: str | None = None, messages: list[tuple[str, str]] | None = None,
                 banned_ids: frozenset[int] = frozenset()):
        self.served, self.prompt, self.sampling, self.stop_ids, self.reply = served, prompt, sampling, stop_ids, reply
        self.banned_ids = banned_ids
        self.tools, self.forced, self.messages = list(tools), forced, messages
        self.request: Request | None = None   # on the engine, once the reply starts
        self.loop: asyncio.AbstractEventLoop | None = None
        self.events: asyncio.Queue | None = None
        self.reason: str | None = None   # why it ended: "stop", "length", "cancelled", "error: ..."
        self.call: dict | None = None
        self.id = uuid.uuid4().hex[:24]
        self.created = int(time.time())

    async def pieces(self, http: HTTPRequest):
        """Content as it comes; the request goes to the engine here, so a stream's starts only once it is sent."""
        talks = self.served.engine.talks
        # the end is not awaited: a client that leaves cancels the stream, and in a cancelled stream every
        # await is cancelled again, which would leave the conversation busy for ever
        talk = await asyncio.to_thread(talks.begin, self.messages) if talks and self.messages else None
        said = None
        try:
            self._submit()
            async for piece in self._content(http):
                yield piece
            said = self._said()
        finally:
            if talk:
                talks.end(talk, said)

    def _submit(self) -> None:
        """The request goes to the engine, whose thread puts its tokens on self.events."""
        engine, s = self.served.engine, self.sampling
        self.loop = asyncio.get_running_loop()
        self.events = asyncio.Queue()
        self.request = Request(self.prompt, s.max_tokens, lambda token, reason: engine.emit(self, token, reason),
                               s.temperature, s.top_k, s.top_p, s.seed, frozenset(self.stop_ids), self.banned_ids)
        engine.scheduler.submit(self.request)

    async def tokens(self, http: HTTPRequest):
        """The tokens as they come, in runs: all that arrived since the last look, so a client that
        falls behind gets fewer, longer chunks. A client that leaves cancels the request (its row is
        freed at the next step)."""
        watcher = asyncio.create_task(self._watch(http))
        try:
            while True:
                run = [await self.events.get()]
                while not self.events.empty():
                    run.append(self.events.get_nowait())
                tokens = [token for token, _ in run if token is not None]
                if tokens:
                    yield tokens
                if run[-1][1] is not None:
                    self.reason = run[-1][1]
                    return
        finally:
            watcher.cancel()
            self.request.cancel()   # nothing if it has ended

    async def _watch(self, http: HTTPRequest) -> None:
        while not await http.is_disconnected():
            await asyncio.sleep(1.0)
        self.request.cancel()

    async def _content(self, http: HTTPRequest):
        reply = self.reply
        async for tokens in self.tokens(http):
            piece = "".join(reply.feed(token) for token in tokens)
            if piece:
                yield piece
            if reply.stopped:   # a stop string: the row is not needed any more
                self.request.cancel()
                self.reason = "stop"
                break
        if not self.complete:
            return
        written = reply.call_text()
        found = tool_call_from_text(written, self.tools, self.forced) if written is not None else None
        if found:
            self.call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                         "function": {"name": found[0], "arguments": json.dumps(found[1])}}
        tail = reply.flush()
        if written and not found:   # a call to no tool the client has: said as text
            reply.text += written
            tail += written
        if tail:
            yield tail

    @property
    def complete(self) -> bool:
        return self.reason in ("stop", "length")

    def _said(self) -> tuple[str, str] | None:
        """The reply as the conversation's next message, once complete."""
        if not self.complete:
            return None
        if self.call:
            return "tool_call", call_text(FunctionCall(**self.call["function"]), self.tools)
        return "assistant", self.reply.text

    def finish_reason(self) -> str:
        return "tool_calls" if self.call else ("length" if self.reason == "length" else "stop")

    def usage(self) -> dict:
        prompt, completion = len(self.prompt), self.reply.tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def error(self) -> ApiError | None:
        if self.reason and self.reason.startswith("error"):
            return ApiError(500, self.reason, type="server_error")
        return None


async def respond(answer: Answer, shape: ChatShape, stream: bool, http: HTTPRequest):
    """The answer whole, or as server-sent events: the opening chunk, one per piece of content, the
    closing ones (finish_reason), the usage if asked, then exactly `data: [DONE]`."""
    if not stream:
        async for _ in answer.pieces(http):
            pass
        if error := answer.error():
            raise error
        return shape.whole()

    async def events():
        for chunk in shape.opening():
            yield sse(chunk)
        async for piece in answer.pieces(http):
            yield sse(shape.piece(piece))
        if error := answer.error():
            yield sse(error.body)
        else:
            for chunk in shape.closing() + ([shape.usage_chunk()] if shape.include_usage else []):
                yield sse(chunk)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def include_usage(request: GenerationRequest) -> bool:
    return bool(request.stream_options and request.stream_options.include_usage)


def stored(what: str, read, item_id: int):
    """read(item_id), or a 404 where the store has no such item, or where no row can have the id (SQLite's
    integers are 64-bit: a bigger one was an OverflowError, a 500)."""
    if not -INT64 <= item_id < INT64:
        raise ApiError(404, f"no {what} {item_id}")
    try:
        return read(item_id)
    except UserError as e:
        raise ApiError(404, str(e)) from None


def check_model(served: Served, requested: str | None) -> None:
    if requested not in (None, served.name):
        raise ApiError(404, f"The model `{requested}` does not exist; this server has `{served.name}`",
                       code="model_not_found")


async def chat_completion(served: Served, http: HTTPRequest):
    request = await read_body(http, ChatRequest)
    check_model(served, request.model)
    tok, tools, forced = served.tokenizer, request.tools or [], forced_tool(request)
    sampling = request.sampling(served.block)
    offered = bool(tools) and request.tool_choice != "none"
    messages = template_messages(request.messages, tools)
    described = [("system", describe_tools(tools))] if offered else []
    # the most recent messages that fit, whole, as the chat fits them (the tool descriptions are the oldest)
    budget = context_budget(served.block, sampling.max_tokens) - (forced is not None)
    opened = [tok.special("<|tool_call|>")] if forced is not None else []   # a forced call: the turn opens it
    prompt = fit_prompt(tok, described + messages, budget) + opened
    reply = Reply(tok, request.stop, calls=offered, in_call=forced is not None)
    answer = Answer(served, prompt, sampling, turn_stops(tok, calls=offered), reply, tools, forced, messages,
                    turn_bans(tok, calls=offered))
    return await respond(answer, ChatShape(answer, include_usage(request)), request.stream, http)


def completion_prompt(served: Served, prompt: str | list[str] | list[int]) -> list[int]:
    """Token ids as given, or the text's; an empty prompt continues from the start of a document."""
    if prompt and isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
        if not all(0 <= p < served.engine.mem.model.cfg.vocab_size for p in prompt):
            raise ApiError(400, "prompt: a token id is outside the vocabulary")
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "prompt: only one prompt per request (n=1)")
    text = prompt[0] if isinstance(prompt, list) and prompt else prompt or ""
    return served.tokenizer.encode(text) or [served.tokenizer.eot_id]


async def completion(served: Served, http: HTTPRequest):
    request = await read_body(http, CompletionRequest)
    check_model(served, request.model)
    answer = Answer(served, completion_prompt(served, request.prompt), request.sampling(served.block),
                    text_stops(served.tokenizer), Reply(served.tokenizer, request.stop))
    return await respond(answer, CompletionShape(answer, include_usage(request)), request.stream, http)


# ---- the app ------------------------------------------------------------------------------------

def create_app(served: Served) -> FastAPI:
    app = FastAPI(title="NimLLM", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, names=own_names(served.host), port=served.port)

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return JSONResponse(ApiError(e.status_code, str(e.detail)).body, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)   # a path parameter of the wrong type
    async def bad_path(_, e: RequestValidationError):
        return JSONResponse(ApiError(400, str(e.errors()[0]["msg"])).body, status_code=400)

    def authorized(http: HTTPRequest) -> None:
        given = http.headers.get("authorization", "").encode()
        if served.api_key and not hmac.compare_digest(given, f"Bearer {served.api_key}".encode()):
            raise ApiError(401, "a valid API key is needed: Authorization: Bearer KEY", code="invalid_api_key")

    keyed = [Depends(authorized)]
    api_routes(app, served, keyed)
    page_routes(app, served, keyed)

    @app.get("/")
    def page():
        return FileResponse(WEB / "index.html")

    app.mount("/web", StaticFiles(directory=WEB), name="web")
    return app


def api_routes(app: FastAPI, served: Served, keyed: list) -> None:
    """OpenAI's endpoints, and the health check."""
    engine, folder, name = served.engine, served.folder, served.name

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat(http: HTTPRequest):
        return await chat_completion(served, http)

    @app.post("/v1/completions", dependencies=keyed)
    async def complete(http: HTTPRequest):
        return await completion(served, http)

    card = {"id": name, "object": "model", "created": int(folder.weights.stat().st_mtime), "owned_by": "nimllm"}

    @app.get("/v1/models", dependencies=keyed)
    def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id}", dependencies=keyed)
    def model(model_id: str):
        check_model(served, model_id)
        return card

    @app.get("/health")
    def health():
        return {"status": "ok", "model": name, "decoding": engine.scheduler.live,
                "waiting": engine.scheduler.waiting.qsize()}


def page_routes(app: FastAPI, served: Served, keyed: list) -> None:
    """What the web page needs beside the API: the conversations, feedback, the memories, the loss plot."""
    folder, name, mem, talks = served.folder, served.name, served.engine.mem, served.engine.talks

    @app.get("/nimllm/info")
    def info():
        return {"model": name, "context": served.block, "remember": talks is not None,
                "api_key": bool(served.api_key), "quiet_after": talks.quiet_after if talks else None}

    @app.get("/nimllm/conversations", dependencies=keyed)
    def conversations():
        return [vars(c) for c in mem.store.conversations()[:100]]

    @app.get("/nimllm/conversations/{conversation_id}", dependencies=keyed)
    def conversation(conversation_id: int):
        found = stored("conversation", mem.store.conversation, conversation_id)
        return {**vars(found), "messages": [vars(m) for m in mem.store.messages(conversation_id)]}

    @app.post("/nimllm/feedback", dependencies=keyed)
    async def feedback(http: HTTPRequest):
        request = await read_body(http, FeedbackRequest)
        if (request.feedback == "fix") != bool(request.fix):
            raise ApiError(400, "feedback is good, bad, or fix with the better answer in `fix`")
        if talks is None:
            raise ApiError(404, "this server keeps no conversations: start it with --remember")
        messages = template_messages(request.messages, [])
        message_id = await asyncio.to_thread(talks.feedback, messages, request.feedback, request.fix)
        return {"message_id": message_id, "feedback": request.feedback}

    @app.get("/nimllm/memories", dependencies=keyed)
    def memories():
        return memory_history(folder, mem.store)

    @app.get("/nimllm/memories/{delta_id}", dependencies=keyed)
    def memory(delta_id: int):
        return {"id": delta_id, "text": stored("memory", lambda i: show_memory(folder, mem.store, i), delta_id)}

    @app.get("/nimllm/loss.png", dependencies=keyed)
    def loss_plot():
        if not folder.loss_plot.exists():
            raise ApiError(404, "this model folder has no loss plot")
        return FileResponse(folder.loss_plot, media_type="image/png")


# ---- the command --------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def every_address(host: str) -> bool:
    """0.0.0.0, :: or "": a socket bound there listens on every address of the machine."""
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, made before the model loads: a port in use fails at once, in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        hint = "; is another server running there? choose another --port" if e.errno == errno.EADDRINUSE else ""
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
    sock.listen(128)   # connections wait in the backlog until the server takes them
    return sock


def run_server(folder: ModelFolder, host: str = "127.0.0.1", port: int = 8000, device: str | None = None,
               api_key: str | None = None, remember: bool = False, max_batch: int = 8,
               quiet_after: float = 300.0, compile: bool = False, log=print) -> int:
    """Serve until Ctrl-C (or SIGTERM); returns the exit code."""
    import uvicorn
    if not is_loopback(host) and not api_key:
        raise UserError(f"--host {host} lets other machines use the model: give --api-key (or set NIMLLM_API_KEY)")
    if max_batch < 1:
        raise UserError("--max-batch must be at least 1")
    sock = listen(host, port)
    mem = Memory(folder, device)
    talks = Talks(mem.store, quiet_after) if remember else None
    engine = Engine(mem, max_batch, talks, log=lambda *text: log(*text, flush=True), compile=compile)
    name = folder.root.name
    app = create_app(Served(engine, name, folder, host, sock.getsockname()[1], api_key))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
    engine.start()
    address = f"[{host}]" if ":" in host else host
    log(f"serving {name} on http://{address}:{sock.getsockname()[1]} (OpenAI API at /v1, web chat at /; "
        f"{max_batch} at a time{', remembering conversations' if remember else ''}); Ctrl-C stops", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
        if talks and (left := talks.close_all()):
            log(f"{left} conversation(s) not learned yet: the next `nimllm serve --remember` or chat learns them")
    return 0
