// NimLLM's web chat: a client of the server's own OpenAI-compatible API (streamed chat completions),
// plus the /nimllm/ endpoints for feedback, stored conversations, memory updates and the loss plot.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  history: [],                                   // the conversation as the API takes it
  info: {},
  key: localStorage.getItem("nimllm-api-key") || "",
};

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

async function api(path, body) {
  const init = body === undefined ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const response = await fetch(path, init);
  if (!response.ok) {
    const error = await response.json().catch(() => ({}));
    if (response.status === 401) $("key-form").hidden = false;
    throw new Error((error.error && error.error.message) || response.statusText);
  }
  return response;
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function scrollDown() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function showMessage(role, text) {
  const el = element("div", "message " + role);
  const body = element("div", "text", text);
  el.append(body);
  $("messages").append(el);
  scrollDown();
  return { el, body };
}

// Server-sent events from a fetch body: calls onData with each parsed `data:` object until [DONE].
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") return;
      onData(JSON.parse(data));
    }
  }
}

async function send(text) {
  state.history.push({ role: "user", content: text });
  showMessage("user", text);
  const reply = showMessage("assistant", "");
  reply.el.classList.add("streaming");
  let content = "";
  let usage = null;
  try {
    const response = await api("/v1/chat/completions", {
      messages: state.history, stream: true, stream_options: { include_usage: true },
      temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value),
    });
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        content += delta.content;
        reply.body.textContent = content;
        scrollDown();
      }
    });
  } catch (error) {
    reply.el.classList.add("error");
    reply.body.textContent = content + (content ? "\n" : "") + "[" + error.message + "]";
    state.history.pop();
    return;
  } finally {
    reply.el.classList.remove("streaming");
  }
  state.history.push({ role: "assistant", content });
  if (!content.trim()) {   // nothing to see (the turn ended at once, or only white space): say so
    reply.el.classList.add("empty");
    reply.body.textContent = content + "(no visible answer)";
  }
  reply.el.dataset.done = "true";
  if (usage) reply.el.append(element("div", "meta", `${usage.completion_tokens} tokens`));
  if (state.info.remember) offerFeedback(reply, state.history.length);
}

// good / bad / fix on the latest answer only: the server finds the conversation by its messages so far,
// as the chat's /good, /bad and /fix rate the last answer.
function offerFeedback(reply, upTo) {
  document.querySelectorAll(".feedback").forEach((old) => old.remove());
  const bar = element("div", "feedback");
  const rate = async (feedback, fix) => {
    try {
      await api("/nimllm/feedback", { messages: state.history.slice(0, upTo), feedback, fix });
      if (fix) {
        state.history[upTo - 1].content = fix;   // the talk goes on from the better answer
        reply.body.textContent = fix;
      }
      bar.replaceChildren(element("span", "meta", {
        good: "noted: a good answer", bad: "noted: this answer will not be learned",
        fix: "noted: your answer will be learned instead" }[feedback]));
    } catch (error) {
      bar.append(element("span", "meta", error.message));
    }
  };
  const good = element("button", "", "good");
  const bad = element("button", "", "bad");
  const fix = element("button", "", "fix…");
  good.onclick = () => rate("good");
  bad.onclick = () => rate("bad");
  fix.onclick = () => {
    const box = element("textarea");
    box.value = reply.body.textContent;
    const save = element("button", "", "learn this answer instead");
    save.onclick = () => box.value.trim() && rate("fix", box.value);
    bar.replaceChildren(box, save);
    box.focus();
  };
  bar.append(good, bad, fix);
  reply.el.append(bar);
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

async function loadConversations() {
  const list = $("conversation-list");
  const conversations = await (await api("/nimllm/conversations")).json();
  list.replaceChildren(...conversations.map((c) => {
    const item = element("li", "", `${c.title || "(nothing said)"}`);
    const learned = c.learned_delta ? `learned in memory ${c.learned_delta}` : c.ended ? "ended" : "open";
    item.append(element("small", "", `#${c.id} · ${c.kind} · ${when(c.started)} · ${learned}`));
    item.onclick = () => showConversation(c.id);
    return item;
  }));
  if (!conversations.length) list.append(element("li", "", "No conversations stored yet."));
}

async function showConversation(id) {
  const conversation = await (await api(`/nimllm/conversations/${id}`)).json();
  $("conversation-view").replaceChildren(...conversation.messages.map((m) => {
    const tool = m.role === "tool_call";
    const el = element("div", "message " + (m.role === "user" ? "user" : "assistant"),
      (tool ? "$ " : "") + (m.feedback === "fix" ? m.fix : m.content));
    if (m.feedback) el.append(element("div", "meta", m.feedback === "fix" ? "fixed by you" : m.feedback));
    return el;
  }));
}

async function loadMemories() {
  const list = $("memory-list");
  const memories = await (await api("/nimllm/memories")).json();
  list.replaceChildren(...memories.reverse().map((m) => {
    const item = element("li", "", m.conversations || "(no conversation)");
    item.append(element("small", "", `memory ${m.id} · ${m.when} · ${m.weights.toLocaleString()} weights in ` +
      `${m.seconds} s${m.forgotten ? " · forgotten" : ""}`));
    item.onclick = async () => {
      $("memory-detail").textContent = (await (await api(`/nimllm/memories/${m.id}`)).json()).text;
    };
    return item;
  }));
  if (!memories.length) list.append(element("li", "", "Nothing learned yet."));
}

async function loadLoss() {
  try {
    const blob = await (await api("/nimllm/loss.png")).blob();   // fetched: an <img> cannot send the key
    $("loss").src = URL.createObjectURL(blob);
    $("loss-missing").hidden = true;
  } catch (error) {
    $("loss").hidden = true;
    $("loss-missing").hidden = false;
  }
}

const loaders = { conversations: loadConversations, memory: loadMemories, training: loadLoss };

function showView(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.view === name));
  document.querySelectorAll(".view").forEach((v) => v.classList.toggle("active", v.id === name));
  if (loaders[name]) loaders[name]().catch((error) => console.error(error));
}

async function start() {
  state.info = await (await fetch("/nimllm/info")).json();
  $("model").textContent = state.info.model;
  document.title = `${state.info.model} · NimLLM`;
  if (state.info.api_key && !state.key) $("key-form").hidden = false;
  const notice = $("notice");
  notice.hidden = false;
  notice.textContent = state.info.remember
    ? `Remembering: this conversation is learned once it has been quiet for ${Math.round(state.info.quiet_after)} s. ` +
      "Rate the last answer with good, bad or fix."
    : "Not remembering: start the server with `nimllm serve --remember` to keep conversations and teach the model.";

  document.querySelectorAll("nav button").forEach((b) => { b.onclick = () => showView(b.dataset.view); });
  $("key-form").onsubmit = (event) => {
    event.preventDefault();
    state.key = $("key").value;
    localStorage.setItem("nimllm-api-key", state.key);
    $("key-form").hidden = true;
  };
  $("composer").onsubmit = async (event) => {
    event.preventDefault();
    const text = $("input").value;
    if (!text.trim()) return;
    $("input").value = "";
    $("send").disabled = true;
    await send(text);
    $("send").disabled = false;
    $("input").focus();
  };
  $("input").onkeydown = (event) => {   // Enter sends, Shift+Enter is a new line
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  };
  $("new-chat").onclick = () => {
    state.history = [];
    $("messages").replaceChildren();
    $("input").focus();
  };
}

start();
