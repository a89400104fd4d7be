"""The chat page with --api-key (the page is public, its API calls carry the typed key) and
--disable-frontend (no page at all)."""

from __future__ import annotations

import httpx
import pytest

from tests.entrypoints.conftest import serve_module
from tests.frontend.conftest import ChatRequests, open_page

API_KEY = "page-key-456"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def keyed_server(tiny_llama_dir, tmp_path_factory):
    yield from serve_module(tiny_llama_dir, tmp_path_factory, "frontend_key",
                            "--api-key", API_KEY, "--kv-cache-memory", "16MiB")


def test_page_is_public_but_the_api_is_not(keyed_server):
    assert httpx.get(keyed_server.url + "/").status_code == 200
    assert httpx.get(keyed_server.url + "/static/app.js").status_code == 200
    assert httpx.get(keyed_server.url + "/v1/models").status_code == 401


def test_page_chats_once_the_key_is_entered(browser, keyed_server, tmp_path):
    requests = ChatRequests()
    with open_page(browser, keyed_server.url + "/", requests) as page:
        # Without the key the model list fails and says so.
        page.wait_for_function("() => document.getElementById('status').textContent.length > 0",
                               timeout=TIMEOUT_MS)
        assert "API key" in page.inner_text("#status")
        page.fill("#message-input", "Hello?")
        page.fill("#max-tokens", "8")
        page.click("#send")
        page.wait_for_selector(".msg.assistant .error", timeout=TIMEOUT_MS)
        assert "API key" in page.inner_text(".msg.assistant .error")
        # With the key: models load, and the answer streams.
        page.fill("#api-key", API_KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("() => document.querySelector('#model').options.length > 0",
                               timeout=TIMEOUT_MS)
        assert page.inner_text("#status") == ""
        page.fill("#message-input", "Hello again?")
        page.click("#send")
        page.wait_for_selector("#send:not([disabled])", timeout=TIMEOUT_MS)
        answer = page.locator(".msg.assistant").last
        assert answer.locator(".error").count() == 0
        assert answer.locator(".stats").inner_text().startswith("8 tokens")
        page.screenshot(path=str(tmp_path / "chat_page_api_key.png"))
        # The key stays in this tab's sessionStorage, never in the saved conversations.
        saved = page.evaluate("() => localStorage.getItem('pagedllm.conversations')")
        assert API_KEY not in saved
        assert page.evaluate("() => sessionStorage.getItem('pagedllm.apiKey')") == API_KEY


def test_disable_frontend_gives_404(tiny_llama_dir, tmp_path_factory):
    for server in serve_module(tiny_llama_dir, tmp_path_factory, "frontend_off",
                               "--disable-frontend", "--kv-cache-memory", "16MiB"):
        assert httpx.get(server.url + "/health").status_code == 200
        assert httpx.get(server.url + "/").status_code == 404
        assert httpx.get(server.url + "/static/app.js").status_code == 404
