"""Regenerates docs/img/chat_page.png: `pagedllm serve` (SmolLM2 by default) + the chat page in
headless system chromium. Usage: PYTHONPATH=. python scripts/screenshot_chat_page.py [MODEL]"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.entrypoints.conftest import start_server

OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "chat_page.png"
PROMPTS = ("What is a paged KV cache? Answer in three bullet points.",
           "Write a Python function that reverses a string.")


def main(model: str) -> None:
    log = Path(tempfile.mkdtemp()) / "server.log"
    server = start_server(model, str(log), "--max-model-len", "2048")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(server.url + "/")
            page.wait_for_function("() => document.querySelector('#model').options.length > 0")
            page.fill("#temperature", "0.3")
            page.fill("#max-tokens", "160")
            for prompt in PROMPTS:
                page.fill("#message-input", prompt)
                page.click("#send")
                page.wait_for_selector("#send:not([disabled])", timeout=300_000)
            OUT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(OUT))
            browser.close()
    finally:
        server.stop()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "SmolLM2-135M-Instruct")
