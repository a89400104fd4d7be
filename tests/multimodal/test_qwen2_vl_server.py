"""Tiny random Qwen2-VL through `pagedllm serve` with the official openai client: an image_url
part (two images of different sizes: different token counts) equals HF transformers fp32
greedy and the usage counts the image tokens; malformed and oversized images are 400s and the
server keeps serving."""

from __future__ import annotations

import openai
import pytest

from tests.entrypoints.conftest import serve_module
from tests.multimodal.conftest import QWEN_IMAGE, data_url, hf_qwen2_vl_greedy, random_image

MAX_TOKENS = 5
MAX_IMAGE_PIXELS = 80 * 80


@pytest.fixture(scope="module")
def server(tiny_qwen2_vl_dir, tmp_path_factory):
    yield from serve_module(tiny_qwen2_vl_dir, tmp_path_factory, "qwen2_vl_server",
                            "--kv-cache-memory", "16MiB", "--served-model-name", "qwen2-vl",
                            "--max-num-batched-tokens", "8",
                            "--limit-mm-per-prompt", '{"image": 2}',
                            "--max-image-pixels", str(MAX_IMAGE_PIXELS))


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _chat(client, content, **kwargs):
    return client.chat.completions.create(
        model="qwen2-vl", messages=[{"role": "user", "content": content}],
        max_tokens=MAX_TOKENS, temperature=0.0, extra_body={"ignore_eos": True}, **kwargs)


def test_image_chat_matches_hf(tiny_qwen2_vl_dir, client):
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from pagedllm.multimodal.image_handlers import handler_for

    images, text = [random_image(6), random_image(7, (64, 30))], "Compare these."
    response = _chat(client, [{"type": "image_url", "image_url": {"url": data_url(images[0])}},
                              {"type": "image_url", "image_url": {"url": data_url(images[1])}},
                              {"type": "text", "text": text}])
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_vl_dir)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{QWEN_IMAGE}\n{QWEN_IMAGE}\n{text}"}],
        add_generation_prompt=True, tokenize=False)
    hf = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2_vl_dir).eval()
    handler = handler_for(hf.config, tiny_qwen2_vl_dir)
    counts = [handler.encode(image).num_tokens for image in images]
    assert counts[0] != counts[1]
    ids = []
    for token in tokenizer.encode(rendered, add_special_tokens=False):
        ids.extend([token] * counts.pop(0) if token == hf.config.image_token_id else [token])
    expected = hf_qwen2_vl_greedy(tiny_qwen2_vl_dir, hf, ids, images, MAX_TOKENS)
    assert response.usage.prompt_tokens == len(ids)
    assert response.choices[0].message.content == tokenizer.decode(expected)


@pytest.mark.parametrize("url, message", [
    ("data:image/png;base64,not*base64!", "base64"),
    ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA", "could not be decoded"),
])
def test_malformed_image_is_400(client, url, message):
    with pytest.raises(openai.BadRequestError, match=message):
        _chat(client, [{"type": "image_url", "image_url": {"url": url}}])


def test_oversized_image_is_400_and_server_keeps_serving(client):
    with pytest.raises(openai.BadRequestError, match="pixels"):
        _chat(client, [{"type": "image_url",
                        "image_url": {"url": data_url(random_image(8, (90, 90)))}}])
    assert _chat(client, "plain text still works").usage.completion_tokens == MAX_TOKENS
