"""Image sources and limits without a model: http(s) only from allowed hosts (a local HTTP
server stands in for one), no redirects followed, local files only under the allowed path,
byte and pixel limits before decoding."""

from __future__ import annotations

import http.server
import threading

import pytest

from pagedllm.config.multimodal import MultiModalConfig
from pagedllm.multimodal.media import load_image_url
from tests.multimodal.conftest import data_url, png_bytes, random_image


@pytest.fixture(scope="module")
def http_host():
    body = png_bytes(random_image(1))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://localhost:9/elsewhere.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_only_from_allowed_hosts(http_host):
    url = f"{http_host}/cat.png"
    with pytest.raises(ValueError, match="refused"):
        load_image_url(url, MultiModalConfig())
    allowed = MultiModalConfig(allowed_media_domains=("127.0.0.1",))
    assert load_image_url(url, allowed).size == (50, 40)
    with pytest.raises(ValueError, match="redirects are not followed"):
        load_image_url(f"{http_host}/redirect", allowed)


def test_local_files_only_under_the_allowed_path(tmp_path):
    inside = tmp_path / "ok" / "a.png"
    inside.parent.mkdir()
    inside.write_bytes(png_bytes(random_image(2)))
    outside = tmp_path / "b.png"
    outside.write_bytes(png_bytes(random_image(2)))
    config = MultiModalConfig(allowed_local_media_path=str(inside.parent))
    assert load_image_url(f"file://{inside}", config).size == (50, 40)
    with pytest.raises(ValueError, match="outside"):
        load_image_url(f"file://{outside}", config)
    with pytest.raises(ValueError, match="outside"):  # no escaping through ..
        load_image_url(f"file://{inside.parent}/../b.png", config)
    with pytest.raises(ValueError, match="refused"):
        load_image_url(f"file://{inside}", MultiModalConfig())


def test_pixel_limit_read_from_the_header():
    url = data_url(random_image(3, (100, 100)))
    with pytest.raises(ValueError, match="10000 pixels"):
        load_image_url(url, MultiModalConfig(max_image_pixels=9_999))
    assert load_image_url(url, MultiModalConfig(max_image_pixels=10_000)).size == (100, 100)


def test_limit_flag_parsing():
    assert MultiModalConfig.parse('{"image": 3}').limit("image") == 3
    for bad in ('{"video": 1}', '{"image": -1}', "[1]", "not json"):
        with pytest.raises(ValueError):
            MultiModalConfig.parse(bad)
