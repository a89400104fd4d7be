"""Tiny random LLaVA through `pagedllm serve` with the official openai client: image_url parts
(data URLs, local files) equal HF transformers fp32 greedy; bad images, too many images and
refused sources are 400s, and the server keeps serving."""

from __future__ import annotations

import base64

import openai
import pytest

from tests.entrypoints.conftest import serve_module
from tests.multimodal.conftest import data_url, hf_llava_greedy, png_bytes, random_image

MAX_TOKENS = 6
MAX_IMAGE_BYTES = 12_000


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("media")
    (directory / "picture.png").write_bytes(png_bytes(random_image(7)))
    return directory


@pytest.fixture(scope="module")
def server(tiny_llava_dir, tmp_path_factory, media_dir):
    yield from serve_module(tiny_llava_dir, tmp_path_factory, "llava_server",
                            "--kv-cache-memory", "16MiB", "--served-model-name", "llava",
                            "--max-num-batched-tokens", "16",
                            "--max-image-bytes", str(MAX_IMAGE_BYTES),
                            "--allowed-local-media-path", str(media_dir))


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _chat(client, content, **kwargs):
    return client.chat.completions.create(
        model="llava", messages=[{"role": "user", "content": content}], max_tokens=MAX_TOKENS,
        temperature=0.0, extra_body={"ignore_eos": True}, **kwargs)


def _expected(tiny_llava_dir, text: str, image) -> tuple[list[int], int]:
    """HF's greedy tokens for the prompt the server renders (the template over the message
    with the image placeholder line before the text), and that prompt's length."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from pagedllm.multimodal.processor import expand_placeholders

    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_dir)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"<image>\n{text}"}], add_generation_prompt=True,
        tokenize=False)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = expand_placeholders(tokenizer.encode(rendered, add_special_tokens=False), image_id, 16)
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    return hf_llava_greedy(tiny_llava_dir, hf, ids, [image], MAX_TOKENS), len(ids)


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_image_chat_matches_hf(tiny_llava_dir, client):
    from transformers import AutoTokenizer

    image, text = random_image(6), "What is in this picture?"
    expected, prompt_len = _expected(tiny_llava_dir, text, image)
    response = _chat(client, [{"type": "text", "text": text},
                              {"type": "image_url", "image_url": {"url": data_url(image)}}])
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_dir)
    assert response.usage.prompt_tokens == prompt_len  # the 16 image tokens counted
    assert response.usage.completion_tokens == MAX_TOKENS
    assert response.choices[0].message.content == tokenizer.decode(expected)
    # streamed, the same text
    chunks = _chat(client, [{"type": "text", "text": text},
                            {"type": "image_url", "image_url": {"url": data_url(image)}}],
                   stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        tokenizer.decode(expected)


def test_local_file_under_allowed_path(tiny_llava_dir, client, media_dir):
    from transformers import AutoTokenizer

    path = media_dir / "picture.png"
    expected, _ = _expected(tiny_llava_dir, "Describe.", random_image(7))
    response = _chat(client, [{"type": "image_url", "image_url": {"url": f"file://{path}"}},
                              {"type": "text", "text": "Describe."}])
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_dir)
    assert response.choices[0].message.content == tokenizer.decode(expected)


@pytest.mark.parametrize("url, message", [
    ("data:image/png;base64,not*base64!", "base64"),
    ("data:image/png;base64," + base64.b64encode(b"plain text, no image").decode(),
     "could not be decoded"),
    ("data:text/plain;base64,aGVsbG8=", "not an image"),
    ("http://example.com/cat.png", "refused"),
    ("file:///etc/hostname", "outside"),
    ("ftp://example.com/cat.png", "must be"),
])
def test_bad_images_are_400(client, url, message):
    with pytest.raises(openai.BadRequestError, match=message):
        _chat(client, [{"type": "image_url", "image_url": {"url": url}},
                       {"type": "text", "text": "hi"}])


def test_limits_are_400_and_server_keeps_serving(client):
    big = random_image(8, (120, 120))  # noise compresses badly: > MAX_IMAGE_BYTES as PNG
    assert len(png_bytes(big)) > MAX_IMAGE_BYTES
    with pytest.raises(openai.BadRequestError, match="larger than"):
        _chat(client, [{"type": "image_url", "image_url": {"url": data_url(big)}}])
    small = {"type": "image_url", "image_url": {"url": data_url(random_image(9))}}
    with pytest.raises(openai.BadRequestError, match="at most 1"):
        _chat(client, [small, small])
    with pytest.raises(openai.BadRequestError, match="no images"):
        _chat(client, "a literal <image> without an image")
    assert _chat(client, "plain text still works").choices[0].message.content is not None
    assert _chat(client, [small]).usage.prompt_tokens > 16
