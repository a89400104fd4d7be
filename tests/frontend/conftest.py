"""Headless Debian chromium driven by Playwright (no `playwright install`: it needs the internet;
scripts/install.sh installs the system chromium). Tests skip when either is missing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def _chromium_path() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


# package scope: the sync API keeps an event loop running in this thread while it is open,
# which would break asyncio.run() in whatever test runs next in the same process
@pytest.fixture(scope="package")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium_path()
    if executable is None:
        pytest.skip("no system chromium (scripts/install.sh installs Debian's)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class ChatRequests:
    """Bodies of the page's /v1/chat/completions requests, as the page sent them."""

    bodies: list[dict] = field(default_factory=list)


@contextmanager
def open_page(browser, url: str, requests: ChatRequests, ignore_eos: bool = True) -> Iterator:
    """A fresh page (own localStorage) at `url` whose chat requests are recorded; with
    ignore_eos each request is forwarded with `ignore_eos: true` (random weights can emit EOS at
    any step, the tests need answers of a known length)."""
    context = browser.new_context(viewport={"width": 1200, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_chat(route, request):
        body = json.loads(request.post_data or "{}")
        requests.bodies.append(body)
        if ignore_eos:
            route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))
        else:
            route.continue_()

    page.route("**/v1/chat/completions", on_chat)
    page.goto(url)
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
