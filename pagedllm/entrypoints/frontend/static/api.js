// The page's two calls to the server: the model list and a streamed chat completion (fetch +
// server-sent events parsed by hand, so the stop button can abort the request).
"use strict";

function headers(apiKey) {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch {
    return `HTTP ${response.status}`;
  }
}

export async function listModels(apiKey) {
  const response = await fetch("/v1/models", { headers: headers(apiKey) });
  if (!response.ok) throw new Error(await errorMessage(response));
  const body = await response.json();
  return body.data.map((m) => m.id);
}

// Yields each JSON payload of the `data:` lines; stops at [DONE]. Events are separated by a blank
// line; a chunk from the network can end anywhere, so the unfinished tail is kept for the next.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// Streams one chat completion; onDelta(text) per content delta, onReasoning(text) per reasoning
// delta (servers with a reasoning parser; vLLM's `reasoning_content`). Resolves with
// { usage, finishReason }; rejects with an Error (its name is "AbortError" when stopped).
export async function streamChat({ apiKey, body, signal, onDelta, onReasoning }) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(apiKey), signal,
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  let usage = null;
  let finishReason = null;
  for await (const chunk of sseEvents(response)) {
    if (chunk.error) throw new Error(chunk.error.message || "server error");
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      const delta = choice.delta || {};
      const reasoning = delta.reasoning_content || delta.reasoning;
      if (reasoning && onReasoning) onReasoning(reasoning);
      if (delta.content) onDelta(delta.content);
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
  }
  return { usage, finishReason };
}
