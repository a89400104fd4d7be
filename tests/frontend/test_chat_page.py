"""The web chat page at `/` against a real `pagedllm serve` (tiny random Llama) in headless
chromium: streaming, stop, sampling controls, markdown safety, conversations; a screenshot."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.entrypoints.conftest import serve_module
from tests.frontend.conftest import ChatRequests, open_page

MODEL = "tiny-chat"
TIMEOUT_MS = 60_000
LONG_CONTEXT = 16384
LONG_ANSWER = 16000


@pytest.fixture(scope="module")
def server(tiny_llama_factory, tmp_path_factory):
    # A long context so that a stopped answer is stopped long before max_tokens: the tiny model
    # writes hundreds of tokens a second.
    model = tiny_llama_factory(max_position_embeddings=LONG_CONTEXT)
    yield from serve_module(model, tmp_path_factory, "frontend",
                            "--served-model-name", MODEL, "--kv-cache-memory", "16MiB")


@pytest.fixture
def chat(browser, server):
    requests = ChatRequests()
    with open_page(browser, server.url + "/", requests) as page:
        page.wait_for_function("() => document.querySelector('#model').options.length > 0",
                               timeout=TIMEOUT_MS)
        yield page, requests


def send(page, text: str, max_tokens: int) -> None:
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#message-input", text)
    page.click("#send")


def last_answer(page):
    return page.locator(".msg.assistant").last


def wait_done(page) -> str:
    """Waits for the send button to come back; returns the answer's stats line."""
    page.wait_for_selector("#send:not([disabled])", timeout=TIMEOUT_MS)
    return last_answer(page).locator(".stats").inner_text()


def abort_count(server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(r'pagedllm:request_success_total\{[^}]*finished_reason="abort"[^}]*\} (\S+)',
                      text)
    assert match, text
    return float(match.group(1))


def test_page_is_served_with_its_assets(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Content-Security-Policy" in page.headers
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert httpx.get(server.url + asset).status_code == 200, asset
    assert httpx.get(server.url + "/static/../api_server.py").status_code == 404
    assert httpx.get(server.url + "/static/nothing.js").status_code == 404


def test_model_picker_lists_served_models(chat):
    page, _ = chat
    assert page.locator("#model option").all_inner_texts() == [MODEL]


def test_streamed_answer_with_tokens_per_second(chat, tmp_path):
    page, requests = chat
    # Records the answer's length at every DOM change: a streamed answer shows partial text.
    page.evaluate("""() => { window.__lengths = [];
        new MutationObserver(() => {
            const all = document.querySelectorAll('.msg.assistant .content');
            if (all.length) window.__lengths.push(all[all.length - 1].textContent.length);
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true}); }""")
    send(page, "Tell me about the fox.", max_tokens=200)
    stats = wait_done(page)
    assert re.search(r"^200 tokens · [\d.]+ tokens/s · length$", stats), stats
    assert last_answer(page).locator(".content").inner_text().strip()
    final_length = len(last_answer(page).locator(".content").text_content())
    lengths = page.evaluate("window.__lengths")
    assert any(0 < n < final_length for n in lengths), (lengths, final_length)
    body = requests.bodies[-1]
    assert body["stream"] is True and body["model"] == MODEL and body["max_tokens"] == 200
    assert body["messages"] == [{"role": "user", "content": "Tell me about the fox."}]
    page.screenshot(path=str(tmp_path / "chat_page.png"))
    assert (tmp_path / "chat_page.png").stat().st_size > 10_000


def test_stop_mid_stream(chat, server):
    page, _ = chat
    aborts_before = abort_count(server)
    send(page, "Write a long story.", max_tokens=LONG_ANSWER)
    # Stop as soon as the first words are on screen.
    page.wait_for_function(
        "() => { const m = document.querySelectorAll('.msg.assistant .content');"
        " return m.length && m[m.length - 1].textContent.length > 0; }", timeout=TIMEOUT_MS)
    page.click("#stop", timeout=5000)
    stats = wait_done(page)
    match = re.match(r"^(\d+) tokens", stats)
    assert match and 0 < int(match.group(1)) < LONG_ANSWER and stats.endswith("stopped"), stats
    # The server saw the disconnect and aborted the request (it did not run to max_tokens).
    deadline_ms = 10_000
    while abort_count(server) <= aborts_before and deadline_ms > 0:
        page.wait_for_timeout(200)
        deadline_ms -= 200
    assert abort_count(server) > aborts_before


def test_sampling_controls_and_system_prompt_reach_the_request(chat):
    page, requests = chat
    page.fill("#temperature", "1.3")
    page.fill("#top-p", "0.85")
    page.click("summary")
    page.fill("#system-prompt", "Answer in one word.")
    send(page, "Hi", max_tokens=4)
    wait_done(page)
    body = requests.bodies[-1]
    assert body["temperature"] == 1.3 and body["top_p"] == 0.85 and body["max_tokens"] == 4
    assert body["messages"][0] == {"role": "system", "content": "Answer in one word."}
    # A follow-up carries the history: system, user, assistant, user.
    first_answer = last_answer(page).locator(".content").inner_text()
    send(page, "And again?", max_tokens=4)
    wait_done(page)
    roles = [m["role"] for m in requests.bodies[-1]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    # (a random model's text may hold control characters the page does not render)
    sent = requests.bodies[-1]["messages"][2]["content"]
    assert _printable(sent) == _printable(first_answer)


def test_conversations_persist_in_local_storage(chat):
    page, _ = chat
    send(page, "First conversation", max_tokens=3)
    wait_done(page)
    page.click("#new-chat")
    send(page, "Second conversation", max_tokens=3)
    wait_done(page)
    page.reload()
    titles = page.locator("#conversations .title").all_inner_texts()
    assert "First conversation" in titles and "Second conversation" in titles
    page.locator("#conversations li", has_text="First conversation").click()
    assert page.locator(".msg.user .content").all_inner_texts() == ["First conversation"]
    page.locator("#conversations li", has_text="First conversation").locator(".delete").click()
    assert "First conversation" not in page.locator("#conversations .title").all_inner_texts()


MARKDOWN_CASES = {
    "<img src=x onerror=alert(1)><script>alert(2)</script>": [],
    "**bold** and *it* and `<b>code</b>`": ["STRONG", "EM", "CODE"],
    "```python\nprint('<hi>')\n```": ["PRE", "CODE"],
    "- one\n- two\n\n1. first": ["UL", "LI", "LI", "OL", "LI"],
    "[site](https://example.com) [bad](javascript:alert(1))": ["A"],
    '[x](https://e.com/"onmouseover="alert(1))': ["A"],
}


@pytest.mark.parametrize("source", list(MARKDOWN_CASES))
def test_markdown_renderer_is_safe(chat, source):
    page, _ = chat
    result = page.evaluate("""async (source) => {
        const { renderMarkdown } = await import('/static/markdown.js');
        const box = document.createElement('div');
        box.innerHTML = renderMarkdown(source);
        const tags = [...box.querySelectorAll('*')].map((e) => e.tagName)
            .filter((t) => t !== 'P' && t !== 'BR');
        const attrs = [...box.querySelectorAll('*')].flatMap((e) =>
            [...e.attributes].map((a) => a.name));
        const links = [...box.querySelectorAll('a')].map((a) => [a.getAttribute('href'), a.rel]);
        return { tags, attrs, links, text: box.textContent };
    }""", source)
    assert result["tags"] == MARKDOWN_CASES[source], result
    assert set(result["attrs"]) <= {"href", "target", "rel", "class"}, result
    for href, rel in result["links"]:
        assert href.startswith("https://") and "noopener" in rel
    if "<script>" in source or "<b>" in source:
        assert "<script>" in result["text"] or "<b>code</b>" in result["text"]


def _fake_stream(route, events: list[str]) -> None:
    body = "".join(f"data: {e}\r\n\r\n" for e in events)
    route.fulfill(status=200, body=body, headers={"Content-Type": "text/event-stream"})


def _chunk(delta: dict, finish_reason=None, usage=None) -> str:
    return json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0,
                       "model": MODEL, "usage": usage,
                       "choices": [{"index": 0, "delta": delta,
                                    "finish_reason": finish_reason}]})


def test_reasoning_usage_and_crlf_events_from_a_scripted_stream(chat):
    page, _ = chat
    events = [_chunk({"role": "assistant"}), _chunk({"reasoning_content": "think <b>hard</b>"}),
              _chunk({"content": "The **answer**"}), _chunk({"content": "."}, "stop"),
              json.dumps({"id": "x", "choices": [], "usage": {"completion_tokens": 7,
                                                            "prompt_tokens": 3,
                                                            "total_tokens": 10}}),
              "[DONE]"]
    page.route("**/v1/chat/completions", lambda route, _request: _fake_stream(route, events))
    send(page, "Why?", max_tokens=16)
    stats = wait_done(page)
    answer = last_answer(page)
    assert stats.startswith("7 tokens") and stats.endswith("stop"), stats  # usage, not chunks
    assert answer.locator(".reasoning").count() == 1
    assert answer.locator(".reasoning").text_content() == "Reasoningthink <b>hard</b>"
    assert answer.locator("strong").inner_text() == "answer"


def test_an_error_event_mid_stream_is_shown(chat):
    page, _ = chat
    events = [_chunk({"content": "partial"}),
              json.dumps({"error": {"message": "engine died", "type": "InternalServerError"}})]
    page.route("**/v1/chat/completions", lambda route, _request: _fake_stream(route, events))
    send(page, "Hi", max_tokens=16)
    wait_done(page)
    answer = last_answer(page)
    assert answer.locator(".error").inner_text() == "Error: engine died"
    assert "partial" in answer.locator(".content").inner_text()


def _printable(text: str) -> str:
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text).strip()
