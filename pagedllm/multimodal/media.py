"""An `image_url` content part's URL -> a checked PIL image: data URLs (base64), file:// URLs
under --allowed-local-media-path, http(s) URLs only from --allowed-media-domains. Every refusal
is a ValueError, so the caller's 400; nothing here is fetched unless a domain was allowed."""

from __future__ import annotations

import base64
import binascii
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pagedllm.config.multimodal import MultiModalConfig
from pagedllm.multimodal.image import ImageLimits, decode_image

_FETCH_TIMEOUT_S = 10.0


def load_image_url(url: str, config: MultiModalConfig) -> Any:
    limits = ImageLimits(config.max_image_bytes, config.max_image_pixels)
    return decode_image(read_image_url(url, config), limits)


def read_image_url(url: str, config: MultiModalConfig) -> bytes:
    """The image's encoded bytes, at most config.max_image_bytes + 1 of them read."""
    if not isinstance(url, str) or not url:
        raise ValueError("image_url.url must be a non-empty string")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _data_url_bytes(url, config.max_image_bytes)
    if scheme == "file":
        return _local_file_bytes(url, config)
    if scheme in ("http", "https"):
        return _remote_bytes(url, config)
    raise ValueError("image_url.url must be a data: URL, a file: URL or an http(s) URL")


def _data_url_bytes(url: str, max_bytes: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ValueError("malformed data URL: no ',' before the data")
    media_type = header[len("data:"):].split(";")[0].strip().lower()
    if media_type and not media_type.startswith("image/"):
        raise ValueError(f"data URL media type {media_type!r} is not an image")
    if not header.lower().endswith(";base64"):
        raise ValueError("image data URLs must be base64 (data:image/...;base64,...)")
    # Base64 holds 3 bytes per 4 characters: refuse an oversized image before decoding it.
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise ValueError(f"image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("malformed base64 in the image data URL") from None


def _local_file_bytes(url: str, config: MultiModalConfig) -> bytes:
    root = config.allowed_local_media_path
    if root is None:
        raise ValueError("file: image URLs are refused (start the server with "
                         "--allowed-local-media-path DIR to allow files under DIR)")
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError("file: image URLs must name a local path")
    path = os.path.realpath(urllib.parse.unquote(parsed.path))
    allowed = os.path.realpath(root)
    if os.path.commonpath([path, allowed]) != allowed:
        raise ValueError("the image file is outside --allowed-local-media-path")
    if not os.path.isfile(path):
        raise ValueError("the image file does not exist")
    if os.path.getsize(path) > config.max_image_bytes:
        raise ValueError(f"image is larger than {config.max_image_bytes} bytes")
    with open(path, "rb") as f:
        return f.read(config.max_image_bytes + 1)


def _remote_bytes(url: str, config: MultiModalConfig) -> bytes:
    host = (urllib.parse.urlparse(url).hostname or "").lower()
    if host not in {d.lower() for d in config.allowed_media_domains}:
        raise ValueError(f"image URLs from {host or 'this host'!r} are refused (start the "
                         f"server with --allowed-media-domains to allow a host)")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=_FETCH_TIMEOUT_S) as response:
            return response.read(config.max_image_bytes + 1)
    except OSError as e:
        raise ValueError(f"could not fetch the image: {e}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could lead from an allowed host to any other (an internal address): the
    allowed host must serve the image itself."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise urllib.error.HTTPError(newurl, code, "redirects are not followed for images",
                                     headers, fp)
