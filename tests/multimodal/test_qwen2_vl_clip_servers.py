"""Tiny random Qwen2-VL and CLIP through `pagedllm serve` with the official openai client (the
two servers start together, one module, to share the start-up wait).

Qwen2-VL chat: an image_url part (two images of different sizes: different token counts)
equals HF transformers fp32 greedy and the usage counts the image tokens; malformed and
oversized images are 400s and the server keeps serving.

CLIP /v1/embeddings: text `input` and vLLM's chat-style `messages` holding an image_url part
equal HF's (L2-normalized) get_text_features / get_image_features; bad images and mixed text +
image are 400s."""

from __future__ import annotations

import signal

import openai
import pytest
import torch

from tests.entrypoints.conftest import _wait_healthy, start_server
from tests.multimodal.conftest import (
    QWEN_IMAGE,
    data_url,
    hf_dual_encoder_features,
    hf_qwen2_vl_greedy,
    random_image,
)

MAX_TOKENS = 5
MAX_IMAGE_PIXELS = 80 * 80


@pytest.fixture(scope="module")
def servers(tiny_qwen2_vl_dir, tiny_clip_dir, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("vlm_servers")
    started = [
        start_server(tiny_qwen2_vl_dir, str(log_dir / "qwen2_vl.log"),
                     "--kv-cache-memory", "16MiB", "--served-model-name", "qwen2-vl",
                     "--max-num-batched-tokens", "8", "--limit-mm-per-prompt", '{"image": 2}',
                     "--max-image-pixels", str(MAX_IMAGE_PIXELS), wait=False),
        start_server(tiny_clip_dir, str(log_dir / "clip.log"), "--served-model-name", "clip",
                     "--max-image-pixels", str(MAX_IMAGE_PIXELS), wait=False),
    ]
    try:
        for server in started:
            _wait_healthy(server)
        yield started
    finally:
        for server in started:  # both shut down at once, then wait for each
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def client(servers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{servers[0].url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def clip_client(servers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{servers[1].url}/v1", api_key="unused", max_retries=0)


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


def _image_message(url: str, text: str | None = None) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def test_clip_text_and_image_embeddings_match_hf(tiny_clip_dir, clip_client):
    image, text = random_image(3), "a photo of a cat"
    (text_ref,), (image_ref,) = hf_dual_encoder_features(tiny_clip_dir, [text], [image])
    by_input = clip_client.embeddings.create(model="clip", input=[text])
    by_image = clip_client.embeddings.create(model="clip", input=None, extra_body={
        "messages": _image_message(data_url(image))})
    for got, ref in ((by_input.data[0].embedding, text_ref),
                     (by_image.data[0].embedding, image_ref)):
        torch.testing.assert_close(torch.tensor(got), torch.nn.functional.normalize(ref, dim=0),
                                   atol=1e-5, rtol=1e-5)
    assert by_image.usage.prompt_tokens == 1


@pytest.mark.parametrize("messages, match", [
    (_image_message("data:image/png;base64,not*base64!"), "base64"),
    (_image_message(data_url(random_image(4, (90, 90)))), "pixels"),
    (_image_message(data_url(random_image(5)), "and text"), "either text or one image"),
])
def test_clip_bad_image_requests_are_400(clip_client, messages, match):
    with pytest.raises(openai.BadRequestError, match=match):
        clip_client.embeddings.create(model="clip", input=None,
                                      extra_body={"messages": messages})
    assert clip_client.embeddings.create(model="clip", input="still serving").data
