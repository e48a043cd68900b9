"""`nimllm serve`: real server processes on loopback, driven by the official `openai` client, raw HTTP, a
killed client process, `nimllm memory list` in a new process and a real headless Chromium; and the
OpenAI <-> chat-template mapping without a model.

The web test saves its screenshot where NIMLLM_WEB_SCREENSHOT says (docs/web-chat.png was made so)."""
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO, copy_model, popen_cli, real_text, run_cli
from test_api import EXEC_BASH, READ_FILE

from nimllm.checkpoint import load_model
from nimllm.config import ModelFolder
from nimllm.console import printable
from nimllm.generate import fastest_decoder, generate
from nimllm.api import Tool, describe_tools
from nimllm.store import Store
from nimllm.tokenizer import SPECIAL_TOKENS, Tokenizer
from nimllm.turns import context_budget, fit_prompt

openai = pytest.importorskip("openai")


class Server:
    """`nimllm serve ARGS` on a free loopback port, its output collected as it comes. `before` is Python that
    process runs first (a fault a test injects into the engine)."""

    def __init__(self, folder: Path, *args, before: str | None = None):
        command = ["serve", "--model", folder, "--port", "0", *args]
        self.process = popen_cli(*command) if before is None else popen_python(before, *command)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.wait_for("serving ").split(" on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=deadline - time.time())
            except queue.Empty:
                break
            if line is None:
                break
            if text in line:
                return line
        raise AssertionError(f"no {text!r} from the server:\n{''.join(self.output)}")

    def client(self, **kwargs):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0,
                             **kwargs)

    def http(self, method: str, path: str, body=None, headers=None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()

    def health(self) -> dict:
        return json.loads(self.http("GET", "/health")[1])

    def stop(self):
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        assert "Traceback" not in "".join(self.output), "".join(self.output)


def popen_python(before: str, *args) -> subprocess.Popen:
    """`nimllm ARGS` as popen_cli runs it, after `before`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    code = f"{before}\nimport sys\nfrom nimllm.cli import main\nsys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory) -> Path:
    """The session's tiny model, copied for this module: its servers open the folder's conversation store."""
    return copy_model(tiny_model, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(trained):
    s = Server(trained)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def model(trained):
    """The served weights in this process, for what `generate` says each reply must be."""
    folder = ModelFolder(trained)
    model, _ = load_model(folder, "cpu")
    return model, Tokenizer.load(folder.tokenizer), fastest_decoder(model)


def expected(model, prompt_ids, max_tokens, stop_ids, **sampling) -> list[int]:
    net, _, decoder = model
    return list(generate(net, prompt_ids, max_tokens, stop_ids=stop_ids, decoder=decoder, **sampling))


def chat_ids(tokenizer, messages) -> list[int]:
    return tokenizer.render_conversation(messages, add_generation_prompt=True)[0]


ALL_SPECIAL = list(range(len(SPECIAL_TOKENS)))


def no_call(tokenizer) -> dict:
    """What a chat completion offered no tools may not write: the opening of a call."""
    return {"banned_ids": [tokenizer.special("<|tool_call|>")]}


# ---- the API through the official client ---------------------------------------------------------

@pytest.mark.slow
def test_models_and_health(server):
    assert [m.id for m in server.client().models.list().data] == ["model"]
    assert server.health()["status"] == "ok"


@pytest.mark.slow
def test_completions_are_the_tokens_of_nimllm_generate(server, trained):
    client = server.client()
    for sampling, flags in [({"temperature": 0}, ["--temperature", "0"]),
                            ({"temperature": 0.8, "top_p": 0.95, "extra_body": {"top_k": 50}},
                             ["--temperature", "0.8", "--top-k", "50", "--top-p", "0.95"])]:
        cli = run_cli("generate", "ROMEO:", "--model", trained, "--max-tokens", "24", "--seed", "3", *flags)
        assert cli.returncode == 0, cli.stderr
        reply = client.completions.create(model="model", prompt="ROMEO:", max_tokens=24, seed=3, **sampling)
        # the API returns the model's text as it is; the terminal gets it through `printable`
        assert "ROMEO:" + printable(reply.choices[0].text) + "\n" == cli.stdout
        assert reply.usage.prompt_tokens > 0 and reply.choices[0].finish_reason in ("length", "stop")
        stream = client.completions.create(model="model", prompt="ROMEO:", max_tokens=24, seed=3, stream=True,
                                           stream_options={"include_usage": True}, **sampling)
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == reply.choices[0].text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens and not chunks[-1].choices


@pytest.mark.slow
def test_chat_completion_streamed_and_not(server, model):
    tokenizer = model[1]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Romeo?"}]
    ids = expected(model, chat_ids(tokenizer, [(m["role"], m["content"]) for m in messages]), 30, ALL_SPECIAL,
                   temperature=0, **no_call(tokenizer))
    client = server.client()
    reply = client.chat.completions.create(model="model", messages=messages, max_tokens=30, temperature=0)
    assert reply.choices[0].message.content == tokenizer.decode(ids) and reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens == len(ids) and reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == ("length" if len(ids) == 30 else "stop")
    chunks = list(client.chat.completions.create(model="model", messages=messages, max_tokens=30, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


@pytest.mark.slow
def test_a_history_longer_than_the_context_keeps_its_newest_messages_whole(server, model):
    tokenizer, block = model[1], model[0].cfg.block_size                      # tiny: a context of 128
    history = [("user" if i % 2 == 0 else "assistant", f"message number {i} of a long talk") for i in range(40)]
    fitted = fit_prompt(tokenizer, history, block - 16)                       # what the chat would send
    assert len(chat_ids(tokenizer, history)) > block and len(fitted) <= block - 16
    ids = expected(model, fitted, 16, ALL_SPECIAL, temperature=0, **no_call(tokenizer))
    reply = server.client().chat.completions.create(model="model", max_tokens=16, temperature=0,
                                                    messages=[{"role": r, "content": c} for r, c in history])
    assert reply.usage.prompt_tokens == len(fitted) and reply.choices[0].message.content == tokenizer.decode(ids)


@pytest.mark.slow
def test_a_chat_offered_no_tools_answers_in_words_where_its_model_would_open_a_call(calling_model):
    s = Server(calling_model)
    try:
        messages = [{"role": "user", "content": "tell me a joke"}]
        reply = s.client().chat.completions.create(model="model", messages=messages, max_tokens=8, temperature=0)
        assert ("words" in reply.choices[0].message.content and not reply.choices[0].message.tool_calls
                and reply.choices[0].finish_reason == "length")
    finally:
        s.stop()


@pytest.mark.slow
def test_the_stream_ends_with_exactly_done(server):
    status, body = server.http("POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
        "stream_options": {"include_usage": True}})
    events = body.decode().split("\n\n")
    assert status == 200 and events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 5
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-2]["usage"] is None


@pytest.mark.slow
def test_stop_strings_end_the_reply_before_them(server, model):
    tokenizer = model[1]
    text = tokenizer.decode(expected(model, tokenizer.encode("KING:"), 40, [tokenizer.eot_id], temperature=1.0,
                                     seed=4))
    stop = text[12:15]   # three characters from inside the reply
    assert len(stop) == 3, text
    client = server.client()
    reply = client.completions.create(model="model", prompt="KING:", max_tokens=40, seed=4, stop=[stop])
    assert reply.choices[0].text == text[:text.index(stop)] and reply.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="model", prompt="KING:", max_tokens=40, seed=4, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == reply.choices[0].text


# ---- tool calls ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_forced_tool_call_comes_back_as_tool_calls_and_its_result_goes_in(server, model):
    """A tiny model never calls a tool by itself: tool_choice forces the call token, and what it writes
    after it is the command of the request's shell tool."""
    tokenizer = model[1]
    tools = [Tool(**READ_FILE), Tool(**EXEC_BASH)]
    user = [("user", "how many files are here?")]
    block = model[0].cfg.block_size   # the tiny model's 128 tokens hold no tool descriptions: they drop out first
    prompt = fit_prompt(tokenizer, [("system", describe_tools(tools))] + user, context_budget(block, 12) - 1)
    prompt += [tokenizer.special("<|tool_call|>")]
    command = tokenizer.decode([t for t in expected(model, prompt, 12, ALL_SPECIAL, temperature=0)
                                if t >= len(SPECIAL_TOKENS)]).strip()
    client = server.client()
    request = {"model": "model", "messages": [{"role": "user", "content": user[0][1]}], "max_tokens": 12,
               "temperature": 0, "tools": [READ_FILE, EXEC_BASH],
               "tool_choice": {"type": "function", "function": {"name": "exec_bash"}}}
    reply = client.chat.completions.create(**request)
    [call] = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and call.type == "function"
    assert call.function.name == "exec_bash" and json.loads(call.function.arguments) == {"command": command}

    chunks = list(client.chat.completions.create(**request, stream=True))
    [streamed] = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    assert streamed.function.name == "exec_bash" and streamed.function.arguments == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # the harness runs it and sends the call and its output back: the model sees its own turn again
    follow = client.chat.completions.create(model="model", max_tokens=4, temperature=0, tools=[READ_FILE, EXEC_BASH],
                                            messages=request["messages"] + [
                                                reply.choices[0].message.model_dump(exclude_none=True),
                                                {"role": "tool", "tool_call_id": call.id, "content": "3"}])
    seen = [("system", describe_tools(tools))] + user + [("tool_call", command), ("tool", "3")]
    assert follow.usage.prompt_tokens == len(fit_prompt(tokenizer, seen, context_budget(block, 4)))


# ---- many clients, bad clients -------------------------------------------------------------------

@pytest.mark.slow
def test_32_concurrent_streams_each_get_their_own_reply(server, model):
    """Distinct prompts and seeds: each stream must be exactly what generate gives its request alone."""
    tokenizer = model[1]
    words = real_text(5000).split()
    jobs = [(f"{words[i]} {words[i + 40]}", i) for i in range(32)]
    wanted = [tokenizer.decode(expected(model, chat_ids(tokenizer, [("user", prompt)]), 20, ALL_SPECIAL,
                                        temperature=1.0, seed=seed, **no_call(tokenizer))) for prompt, seed in jobs]
    client = server.client()

    def ask(job):
        prompt, seed = job
        chunks = list(client.chat.completions.create(model="model", messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=20, seed=seed, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason
        assert len({c.id for c in chunks}) == 1
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(ask, jobs))
    assert got == wanted and len(set(got)) > 16
    assert server.health()["decoding"] == 0


@pytest.mark.slow
def test_bad_requests_get_4xx_in_openai_shape_and_the_server_stays_up(server):
    cases = [(b"{not json", 400), ({"messages": []}, 400), ({"messages": [{"role": "wizard", "content": "x"}]}, 400),
             ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400),
             ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400),
             ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function", "function": {
                 "name": "ghost"}}, "tools": [EXEC_BASH]}, 400),
             ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404),
             (b'{"messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}', 413)]
    for body, status in cases:
        got, answer = server.http("POST", "/v1/chat/completions", body)
        error = json.loads(answer)["error"]
        assert got == status and error["message"] and error["type"], (body[:80], got, answer)
    assert server.http("GET", "/v1/nothing")[0] == 404
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="gpt-4o", prompt="x", max_tokens=1)
    assert server.http("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200
    assert server.health()["status"] == "ok"



@pytest.mark.slow
def test_numbers_beyond_openai_bounds_get_400_and_a_tiny_temperature_is_greedy(server):
    """A seed past 64 bits once never got an answer and failed the stream batched with it, and a
    temperature of 5e-324 answered 500 (its probabilities were inf/nan): every number is bounded as
    OpenAI bounds it, in both endpoints, and the tiniest temperature is greedy."""
    bodies = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
              "/v1/completions": {"prompt": "ROMEO:", "max_tokens": 4}}
    beyond = [("seed", 2**64), ("seed", -2**63 - 1), ("temperature", 2.01), ("temperature", -1e-9), ("top_p", 0),
              ("top_p", 1.0001), ("top_k", 0), ("top_k", 2**63), ("max_tokens", 0), ("max_tokens", 2**63),
              ("max_completion_tokens", 0), ("n", 2)]
    for path, body in bodies.items():
        for field, value in beyond:
            status, answer = server.http("POST", path, {**body, field: value})
            error = json.loads(answer)["error"]
            assert (status, error["type"], error["param"]) == (400, "invalid_request_error", field), (path, field)
        for seed in (2**63 - 1, -2**63):   # the ends of a signed 64-bit integer are seeds
            assert server.http("POST", path, {**body, "seed": seed})[0] == 200
    replies = [server.http("POST", "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 12, "temperature": t})
               for t in (0, 5e-324, 1e-300)]
    assert [status for status, _ in replies] == [200] * 3
    assert len({json.loads(body)["choices"][0]["text"] for _, body in replies}) == 1


@pytest.mark.slow
def test_ids_no_row_can_have_are_not_found(server):
    """Ids past SQLite's 64-bit integers once answered 500."""
    for path in ("/nimllm/conversations", "/nimllm/memories"):
        for item in (99999999999999999999, 2**63, -2**63 - 1, 2**63 - 1, -1):
            status, body = server.http("GET", f"{path}/{item}")
            error = json.loads(body)["error"]
            assert status == 404 and str(item) in error["message"], (path, item, body)


# a fault inside the engine for the one request the test marks (top_k 13); every other sampled token waits 10 ms,
# so the streams batched with it are still decoding when it arrives
FAULT = """
import time
import nimllm.generate as engine
sample = engine.sample_next
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    if top_k == 13:
        raise RuntimeError("injected fault")
    time.sleep(0.01)
    return sample(logits, temperature, top_k, top_p, generator)
engine.sample_next = sample_next
"""


@pytest.mark.slow
def test_a_request_that_fails_in_the_engine_fails_alone(trained, model):
    """Two streams decode; a third request, sampled in the same steps, fails inside the engine: it alone gets
    a 500 in OpenAI's shape, the streams go on to exactly what generate gives them alone, and the server
    serves on."""
    tokenizer = model[1]
    asks = [("ROMEO:", 3), ("KING:", 4)]   # sampled: only sampled rows meet the fault
    wanted = [tokenizer.decode(expected(model, tokenizer.encode(prompt), 100, [tokenizer.eot_id], temperature=1.0,
                                        seed=seed)) for prompt, seed in asks]
    server = Server(trained, before=FAULT)
    try:
        streams = []
        for prompt, seed in asks:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            connection.request("POST", "/v1/completions", json.dumps({"prompt": prompt, "max_tokens": 100, "seed": seed,
                                                                       "stream": True}),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            streams.append((response, response.readline()))   # the first token: it is decoding
        assert server.health()["decoding"] == 2
        status, body = server.http("POST", "/v1/completions", {"prompt": "x", "max_tokens": 5, "top_k": 13})
        error = json.loads(body)["error"]
        assert status == 500 and error["type"] == "server_error" and "injected fault" in error["message"]
        got = []
        for response, first in streams:
            events = (first + response.read()).decode().split("\n\n")
            assert events[-2:] == ["data: [DONE]", ""] and "error" not in events[-3]
            got.append("".join(json.loads(e.removeprefix("data: "))["choices"][0]["text"] for e in events[:-2]))
        assert got == wanted
        server.wait_for("injected fault")   # the server's log says why the request failed
        assert server.health()["decoding"] == 0
        assert server.http("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200
    finally:
        server.stop()

@pytest.mark.slow
def test_a_client_killed_mid_stream_frees_its_row(server, model):
    """A client process streams a reply that would never end (max_tokens 10^6) and is SIGKILLed after its
    first chunk: the server notices, frees the row, and answers the next request at once, with what `generate`
    gives it. Both are greedy: a sampled reply may end at its first token, which proves nothing."""
    client = subprocess.Popen([sys.executable, "-c", f"""
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", {server.port})
body = {{"prompt": "a", "max_tokens": 1000000, "stream": True, "temperature": 0}}
c.request("POST", "/v1/completions", json.dumps(body), {{"Content-Type": "application/json"}})
r = c.getresponse()
print(r.readline().decode().strip()[:6], flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "data:"
    assert server.health()["decoding"] == 1
    client.kill()
    client.wait()
    deadline = time.time() + 10
    while server.health()["decoding"] and time.time() < deadline:
        time.sleep(0.1)
    assert server.health()["decoding"] == 0
    tokenizer = model[1]
    ids = expected(model, tokenizer.encode("ROMEO:"), 8, [tokenizer.eot_id], temperature=0)
    reply = server.client().completions.create(model="model", prompt="ROMEO:", max_tokens=8, temperature=0,
                                               timeout=10)
    assert reply.usage.completion_tokens == len(ids) and reply.choices[0].text == tokenizer.decode(ids)


# ---- --remember, --api-key, refusals -------------------------------------------------------------

@pytest.mark.slow
def test_remembered_conversation_is_stored_learned_and_listed(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "model")
    folder = ModelFolder(tmp_path / "model")
    server = Server(folder.root, "--remember", "--quiet-after", "1", "--api-key", "sesame")
    try:
        assert server.http("GET", "/v1/models")[0] == 401
        with pytest.raises(openai.AuthenticationError):
            server.client(api_key="wrong").models.list()
        client = server.client(api_key="sesame")
        key = {"Authorization": "Bearer sesame"}
        history = [{"role": "user", "content": "my sister Ilse lives in Tromso"}]
        first = client.chat.completions.create(model="model", messages=history, max_tokens=6, seed=1)
        history.append({"role": "assistant", "content": first.choices[0].message.content})
        status, _ = server.http("POST", "/nimllm/feedback", {"messages": history, "feedback": "good"}, key)
        assert status == 200
        history.append({"role": "user", "content": "where does Ilse live?"})
        client.chat.completions.create(model="model", messages=history, max_tokens=6, seed=2)
        server.wait_for("updated ", timeout=60)   # Memory.learn's report, once quiet for a second
        status, body = server.http("GET", "/nimllm/memories", headers=key)
        assert status == 200 and "my sister Ilse" in json.loads(body)[0]["conversations"]
    finally:
        server.stop()
    with Store(folder.store) as store:
        [conversation] = store.conversations()
        messages = store.messages(conversation.id)
    assert conversation.kind == "server" and conversation.ended and conversation.learned_delta is not None
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1].feedback == "good" and messages[2].content == "where does Ilse live?"
    listed = run_cli("memory", "list", "--model", folder.root)
    assert listed.returncode == 0 and "my sister Ilse" in listed.stdout and "Tromso" in listed.stdout   # (wrapped)


@pytest.mark.slow
def test_refusals_are_one_line_errors(trained, tmp_path):
    beyond = run_cli("serve", "--model", trained, "--host", "0.0.0.0")
    assert beyond.returncode == 1 and "--api-key" in beyond.stderr and len(beyond.stderr.splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run_cli("serve", "--model", trained, "--port", taken.getsockname()[1])
    assert busy.returncode == 1 and "in use" in busy.stderr and len(busy.stderr.splitlines()) == 1
    missing = run_cli("serve", "--model", tmp_path / "nothing")
    assert missing.returncode == 1 and missing.stderr.startswith("nimllm: error: ") and "Traceback" not in missing.stderr



# ---- a page of another site: no use of a server without a key -----------------------------------

@pytest.fixture(scope="module")
def remembering(trained, tmp_path_factory):
    """A --remember server without a key: what a page could make it learn, and the conversations it could read."""
    root = tmp_path_factory.mktemp("remembering")
    shutil.copytree(trained, root / "model")
    s = Server(root / "model", "--remember")
    yield s
    s.stop()


def stored_text(server) -> str:
    """Every message of every conversation the server keeps, read through its own endpoints."""
    listed = json.loads(server.http("GET", "/nimllm/conversations")[1])
    return "\n".join(m["content"] for c in listed
                     for m in json.loads(server.http("GET", f"/nimllm/conversations/{c['id']}")[1])["messages"])


@pytest.mark.slow
def test_a_page_of_another_site_can_neither_use_nor_teach_a_keyless_server(remembering):
    """Any page may POST text/plain or a form across sites without a CORS preflight, and a browser names the
    page's origin in every POST: neither reaches the model nor the store. The server's own page (its origin,
    JSON) is served, as are clients that send no Origin."""
    port = remembering.port
    chat = json.dumps({"messages": [{"role": "user", "content": "the password is walrus"}], "max_tokens": 2}).encode()
    refused = [({"Content-Type": "text/plain", "Origin": "http://evil.example"}, 403),
               ({"Content-Type": "text/plain"}, 415),
               ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
               ({"Origin": "http://evil.example"}, 403),
               ({"Origin": "null"}, 403),                        # a sandboxed frame, a file:// page
               ({"Origin": "http://127.0.0.1:1"}, 403),          # another server of this machine
               ({"Origin": f"https://127.0.0.1:{port}"}, 403)]
    for headers, status in refused:
        got, body = remembering.http("POST", "/v1/chat/completions", chat, headers)
        error = json.loads(body)["error"]
        assert (got, error["type"]) == (status, "invalid_request_error") and error["message"], (headers, got, body)
    assert "walrus" not in stored_text(remembering)
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        got, body = remembering.http("POST", "/v1/chat/completions", chat, {"Origin": origin})
        assert got == 200 and json.loads(body)["object"] == "chat.completion"
    assert "walrus" in stored_text(remembering)


@pytest.mark.slow
def test_a_rebound_name_reads_no_conversation(remembering):
    """DNS rebinding: a page's own name made to resolve to 127.0.0.1 is the page's origin for the browser, so
    only the Host header tells it from this server's: under such a name nothing is served."""
    port = remembering.port
    assert remembering.http("POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "my PIN is 4711"}], "max_tokens": 2})[0] == 200
    [mine] = [c for c in json.loads(remembering.http("GET", "/nimllm/conversations")[1]) if "4711" in c["title"]]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        for path in ("/nimllm/conversations", f"/nimllm/conversations/{mine['id']}", "/nimllm/memories",
                     "/v1/models", "/health", "/"):
            status, body = remembering.http("GET", path, headers={"Host": host})
            error = json.loads(body)["error"]
            assert (status, error["code"]) == (421, "misdirected_request") and b"4711" not in body, (host, path)
    status, body = remembering.http("GET", "/nimllm/conversations", headers={"Origin": "http://evil.example"})
    assert status == 403 and b"4711" not in body
    for host in ("127.0.0.1@evil.example", "[::1", "localhost:port"):
        assert remembering.http("GET", "/nimllm/conversations", headers={"Host": host})[0] == 400, host
    for host in (f"localhost:{port}", "localhost", f"127.0.0.1:{port}", f"[::1]:{port}", "[::1]", "LocalHost"):
        status, body = remembering.http("GET", "/nimllm/conversations", headers={"Host": host})
        assert status == 200 and b"4711" in body, host


def test_a_host_given_is_a_name_of_the_server_too():
    """With --host NAME, NAME is the server's as well as the loopback names; with --host 0.0.0.0 any name is
    (the key that requires guards it), but an Origin still needs the server's port and a POST JSON."""
    from starlette.datastructures import Headers

    from nimllm.server import own_names, refusal

    def status(host, names, origin=None, method="GET", content_type="application/json"):
        headers = Headers({"host": host, "content-type": content_type, **({"origin": origin} if origin else {})})
        error = refusal(headers, method, names, 8000)
        return error and error.status
    box = own_names("box.lan")
    assert [status("box.lan:8000", box), status("localhost", box), status("other.lan", box),
            status("box.lan", box, "http://box.lan:8000"), status("box.lan", box, "http://other.lan:8000")] == [
        None, None, 421, None, 403]
    assert own_names("127.0.0.1") == own_names("::1") == own_names("localhost")
    assert status("box.lan", own_names("127.0.0.1")) == 421
    everywhere = own_names("0.0.0.0")
    assert [status("10.0.0.5:8000", everywhere), status("10.0.0.5", everywhere, "http://10.0.0.5:8000"),
            status("10.0.0.5", everywhere, "http://10.0.0.5:9000"),
            status("10.0.0.5", everywhere, method="POST", content_type="text/plain")] == [None, None, 403, 415]

# ---- the web page in a real browser --------------------------------------------------------------

def chromium():
    """A headless Chromium driven by selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_the_web_page_streams_a_reply_in_a_real_browser(trained, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser = chromium()
    shutil.copytree(trained, tmp_path / "model")
    server = Server(tmp_path / "model", "--remember")
    try:
        browser.set_window_size(1100, 760)
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.ID, "model").text == "model")
        temperature = browser.find_element(By.ID, "temperature")   # greedy: the same replies every run
        browser.execute_script("arguments[0].value = '0'", temperature)
        for text in ("Good morning, cousin.", "What news from Verona?"):
            browser.find_element(By.ID, "input").send_keys(text)
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".message.assistant[data-done]"))
                       == (2 if "Verona" in text else 1))
        # the page shows what the model said, as the server stored it
        shown = [r.text.strip() for r in browser.find_elements(By.CSS_SELECTOR, ".message.assistant .text")]
        with Store(ModelFolder(tmp_path / "model").store) as store:
            said = [m.content.strip() for c in store.conversations() for m in store.messages(c.id)
                    if m.role == "assistant"]
        assert len(said) == 2 and shown == [text or "(no visible answer)" for text in said]
        browser.find_element(By.XPATH, "//div[@class='feedback']/button[text()='good']").click()
        wait.until(lambda b: "noted: a good answer" in b.find_element(By.CLASS_NAME, "feedback").text)
        if os.environ.get("NIMLLM_WEB_SCREENSHOT"):
            browser.save_screenshot(os.environ["NIMLLM_WEB_SCREENSHOT"])
        browser.find_element(By.CSS_SELECTOR, "nav button[data-view=conversations]").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#conversation-list li"))
        assert "Good morning, cousin." in browser.find_element(By.ID, "conversation-list").text
        browser.find_element(By.CSS_SELECTOR, "nav button[data-view=training]").click()
        wait.until(lambda b: b.execute_script("const i = document.getElementById('loss'); "
                                              "return i.complete && i.naturalWidth > 0"))
        # a phone: nothing wider than the screen, the message box and the send button in view
        browser.set_window_size(390, 844)
        browser.find_element(By.CSS_SELECTOR, "nav button[data-view=chat]").click()
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        assert browser.find_element(By.ID, "send").is_displayed() and browser.find_element(By.ID, "input").is_displayed()
        browser.save_screenshot(str(tmp_path / "phone.png"))
    finally:
        browser.quit()
        server.stop()
    with Store(ModelFolder(tmp_path / "model").store) as store:
        [conversation] = store.conversations()
        messages = store.messages(conversation.id)
    assert [m.content for m in messages if m.role == "user"] == ["Good morning, cousin.", "What news from Verona?"]
    assert messages[-1].feedback == "good"
