// A small, safe markdown renderer for model output. Safety rule: every piece of model text is
// HTML-escaped before any markup is added, and the only markup added is from a fixed set of tags
// (p, pre, code, strong, em, ul, ol, li, h1-h6, a). Links keep only http(s)/mailto targets.
"use strict";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Inline spans of an already-escaped line. Code spans are cut out first so that nothing inside
// them is read as emphasis or links.
function renderInline(escaped) {
  const codes = [];
  let s = escaped.replace(/`([^`\n]+)`/g, (_, code) => {
    codes.push(`<code>${code}</code>`);
    return `\u0000${codes.length - 1}\u0000`;
  });
  s = s.replace(/\[([^\]\n]+)\]\(([^)\s]+)\)/g, (whole, label, url) => {
    // The URL is escaped text already (no quotes or angle brackets can remain in it).
    if (!/^(https?:\/\/|mailto:)/i.test(url)) return whole;
    return `<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`;
  });
  s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/__([^_\n]+)__/g, "<strong>$1</strong>");
  s = s.replace(/(^|[^*\w])\*([^*\n]+)\*(?!\w)/g, "$1<em>$2</em>");
  s = s.replace(/(^|[^_\w])_([^_\n]+)_(?!\w)/g, "$1<em>$2</em>");
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => codes[Number(i)]);
}

const LIST_ITEM = /^\s*([-*+]|\d+[.)])\s+(.*)$/;

// Block structure of text with no code fences: headings, lists and paragraphs.
function renderBlocks(text) {
  const out = [];
  let paragraph = [];
  let list = null; // { tag, items }
  const flushParagraph = () => {
    if (paragraph.length) out.push(`<p>${paragraph.map(renderInline).join("<br>")}</p>`);
    paragraph = [];
  };
  const flushList = () => {
    if (list) out.push(`<${list.tag}>${list.items.map((i) => `<li>${i}</li>`).join("")}</${list.tag}>`);
    list = null;
  };
  for (const line of escapeHtml(text).split("\n")) {
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const item = LIST_ITEM.exec(line);
    if (heading) {
      flushParagraph(); flushList();
      const level = heading[1].length;
      out.push(`<h${level}>${renderInline(heading[2])}</h${level}>`);
    } else if (item) {
      flushParagraph();
      const tag = /\d/.test(item[1]) ? "ol" : "ul";
      if (list && list.tag !== tag) flushList();
      if (!list) list = { tag, items: [] };
      list.items.push(renderInline(item[2]));
    } else if (line.trim() === "") {
      flushParagraph(); flushList();
    } else {
      flushList();
      paragraph.push(line);
    }
  }
  flushParagraph(); flushList();
  return out.join("");
}

// Full render: ``` fences become <pre><code>; an unclosed fence (mid-stream) runs to the end.
export function renderMarkdown(text) {
  const parts = String(text).split(/^```/m);
  let html = "";
  parts.forEach((part, i) => {
    if (i % 2 === 0) {
      html += renderBlocks(part);
      return;
    }
    const newline = part.indexOf("\n");
    const lang = newline < 0 ? "" : part.slice(0, newline).trim();
    const code = newline < 0 ? "" : part.slice(newline + 1).replace(/\n$/, "");
    const cls = /^[\w+-]+$/.test(lang) ? ` class="language-${lang}"` : "";
    html += `<pre><code${cls}>${escapeHtml(code)}</code></pre>`;
  });
  return html;
}
