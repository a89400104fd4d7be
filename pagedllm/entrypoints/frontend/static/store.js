// Conversations kept in the browser's localStorage (nothing is stored on the server).
"use strict";

const KEY = "pagedllm.conversations";

export function loadConversations() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return []; // a corrupt entry must not break the page
  }
}

export function saveConversations(list) {
  localStorage.setItem(KEY, JSON.stringify(list));
}

export function newConversation() {
  const id = `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  return { id, title: "New chat", messages: [], created: Date.now() };
}

export function titleFrom(text) {
  const line = text.trim().split("\n")[0];
  return line.length > 40 ? `${line.slice(0, 40)}…` : line || "New chat";
}
