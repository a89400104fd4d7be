// The chat page's UI: conversation list, composer, settings, streaming with stop, tokens/s.
"use strict";

import { listModels, streamChat } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { loadConversations, newConversation, saveConversations, titleFrom } from "./store.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "pagedllm.apiKey"; // sessionStorage: the key is gone when the tab closes

let conversations = loadConversations();
let current = null;
let controller = null; // AbortController of the answer being streamed

function persist() {
  saveConversations(conversations);
}

function selectConversation(conversation) {
  current = conversation;
  renderConversationList();
  renderMessages();
}

function renderConversationList() {
  const list = $("conversations");
  list.replaceChildren();
  for (const c of [...conversations].sort((a, b) => b.created - a.created)) {
    const li = document.createElement("li");
    li.className = c === current ? "active" : "";
    li.dataset.id = c.id;
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = c.title; // textContent: user text never becomes markup
    const del = document.createElement("button");
    del.className = "delete";
    del.type = "button";
    del.title = "Delete";
    del.textContent = "×";
    del.addEventListener("click", (e) => { e.stopPropagation(); deleteConversation(c); });
    li.append(title, del);
    li.addEventListener("click", () => { if (!controller) selectConversation(c); });
    list.append(li);
  }
}

function deleteConversation(conversation) {
  if (controller && conversation === current) return;
  conversations = conversations.filter((c) => c !== conversation);
  persist();
  if (conversation === current) startConversation();
  else renderConversationList();
}

function startConversation() {
  const empty = conversations.find((c) => c.messages.length === 0);
  const conversation = empty || newConversation();
  if (!empty) conversations.push(conversation);
  persist();
  selectConversation(conversation);
}

function statsText(stats) {
  if (!stats) return "";
  const parts = [`${stats.tokens} tokens`];
  if (stats.tokensPerSecond) parts.push(`${stats.tokensPerSecond.toFixed(1)} tokens/s`);
  if (stats.finishReason) parts.push(stats.finishReason);
  return parts.join(" · ");
}

function messageElement(message) {
  const div = document.createElement("div");
  div.className = `msg ${message.role}`;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role === "user" ? "You" : message.model || "Assistant";
  const content = document.createElement("div");
  content.className = "content";
  const stats = document.createElement("div");
  stats.className = "stats";
  div.append(role, content, stats);
  fillMessage(div, message);
  return div;
}

function fillMessage(div, message) {
  const content = div.querySelector(".content");
  if (message.role === "user") content.textContent = message.content;
  else content.innerHTML = renderMarkdown(message.content); // escaped inside renderMarkdown
  if (message.reasoning) content.prepend(reasoningElement(div, message.reasoning));
  if (message.error) {
    const error = document.createElement("div");
    error.className = "error";
    error.textContent = message.error;
    content.append(error);
  }
  div.querySelector(".stats").textContent = statsText(message.stats);
}

// The model's reasoning as plain text in a collapsible block (kept open if the user opened it).
function reasoningElement(div, text) {
  const details = document.createElement("details");
  details.className = "reasoning";
  details.open = div.dataset.reasoningOpen === "1";
  details.addEventListener("toggle", () => { div.dataset.reasoningOpen = details.open ? "1" : ""; });
  const summary = document.createElement("summary");
  summary.textContent = "Reasoning";
  const body = document.createElement("div");
  body.textContent = text;
  details.append(summary, body);
  return details;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren(...current.messages.map(messageElement));
  box.scrollTop = box.scrollHeight;
}

function number(id) {
  const value = Number($(id).value);
  return Number.isFinite(value) && $(id).value !== "" ? value : undefined;
}

function requestBody() {
  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of current.messages) {
    if (m.role === "user" || (m.role === "assistant" && m.content)) {
      messages.push({ role: m.role, content: m.content });
    }
  }
  return {
    model: $("model").value || undefined, messages,
    temperature: number("temperature"), top_p: number("top-p"), max_tokens: number("max-tokens"),
  };
}

function setStreaming(streaming) {
  $("send").disabled = streaming;
  $("stop").disabled = !streaming;
}

async function send(text) {
  const conversation = current;
  if (conversation.messages.length === 0) conversation.title = titleFrom(text);
  conversation.messages.push({ role: "user", content: text });
  const body = requestBody();
  const answer = { role: "assistant", content: "", model: body.model };
  conversation.messages.push(answer);
  persist();
  renderConversationList();
  renderMessages();
  const div = $("messages").lastElementChild;
  controller = new AbortController();
  setStreaming(true);
  const started = performance.now();
  let firstTokenAt = null;
  let chunks = 0;
  let result = null;
  try {
    result = await streamChat({
      apiKey: $("api-key").value.trim(), body, signal: controller.signal,
      onDelta: (delta) => {
        firstTokenAt = firstTokenAt ?? performance.now();
        chunks += 1;
        answer.content += delta;
        scheduleRender(div, answer);
      },
      onReasoning: (delta) => {
        firstTokenAt = firstTokenAt ?? performance.now();
        chunks += 1;
        answer.reasoning = (answer.reasoning || "") + delta;
        scheduleRender(div, answer);
      },
    });
  } catch (err) {
    if (err.name === "AbortError") result = { finishReason: "stopped" };
    else answer.error = `Error: ${err.message}`;
  }
  answer.stats = answerStats(result, chunks, started, firstTokenAt);
  controller = null;
  setStreaming(false);
  fillMessage(div, answer);
  persist();
}

// At most one re-render per frame: a fast model sends hundreds of deltas a second, and rendering
// the whole answer for each one would keep the page's thread busy (the stop button included).
let renderPending = false;
function scheduleRender(div, message) {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    fillMessage(div, message);
    $("messages").scrollTop = $("messages").scrollHeight;
  });
}

// tokens/s over the decode phase (first token to last), from the server's usage count when it
// sent one (a stopped stream has none: each content chunk is then counted as one token).
function answerStats(result, chunks, started, firstTokenAt) {
  if (!result) return null;
  const tokens = result.usage ? result.usage.completion_tokens : chunks;
  const seconds = (performance.now() - (firstTokenAt ?? started)) / 1000;
  const tokensPerSecond = tokens > 1 && seconds > 0 ? (tokens - 1) / seconds : null;
  return { tokens, tokensPerSecond, finishReason: result.finishReason };
}

async function refreshModels() {
  const select = $("model");
  const previous = select.value;
  try {
    const models = await listModels($("api-key").value.trim());
    select.replaceChildren(...models.map((id) => new Option(id, id)));
    if (models.includes(previous)) select.value = previous;
    $("status").textContent = "";
  } catch (err) {
    $("status").textContent = `Models: ${err.message}`;
  }
}

function wire() {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("message-input").value.trim();
    if (!text || controller) return;
    $("message-input").value = "";
    send(text);
  });
  $("message-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("new-chat").addEventListener("click", () => { if (!controller) startConversation(); });
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    refreshModels();
  });
}

wire();
startConversation();
refreshModels();
