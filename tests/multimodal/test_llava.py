"""Tiny random LLaVA-1.5 through the offline engine against HF transformers (fp32 greedy):
a mixed batch of image and text-only prompts with chunked prefill splitting the image
placeholders, prefix-cache hits with the same image and none with another, and the checks on
what a prompt may hold."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from tests.engine_internals import model_runner as _runner
from tests.engine_internals import run_to_completion
from tests.multimodal.conftest import hf_llava_greedy, random_image
from tests.multimodal.vlm_checks import expected_tokens, load_hf

MAX_TOKENS = 8
PARAMS = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def hf(tiny_llava_dir):
    return load_hf(tiny_llava_dir, "LlavaForConditionalGeneration")


@pytest.fixture(scope="module")
def llm(tiny_llava_dir):
    # a 16-token budget: each image's 16 placeholders are split over two steps
    return LLM(tiny_llava_dir, kv_cache_memory="16MiB", max_num_batched_tokens=16,
               limit_mm_per_prompt={"image": 2})


def _expected(tiny_llava_dir, hf, llm, prompt: dict) -> list[int]:
    return expected_tokens(hf_llava_greedy, tiny_llava_dir, hf, llm, prompt, MAX_TOKENS)


def test_mixed_batch_matches_hf(tiny_llava_dir, hf, llm):
    prompts = [
        {"prompt": "USER: <image>\nWhat is in the picture? ASSISTANT:",
         "multi_modal_data": {"image": random_image(1)}},
        {"prompt": "Tell me a story about the weather today, please."},
        {"prompt": "USER: a question <image> about this ASSISTANT:",
         "multi_modal_data": {"image": random_image(2, (64, 30))}},
        {"prompt": "USER: <image> and <image>: which differs? ASSISTANT:",
         "multi_modal_data": {"image": [random_image(4), random_image(1)]}},
    ]
    expected = [_expected(tiny_llava_dir, hf, llm, p) for p in prompts]
    runs_before = _runner(llm).mm.num_encoder_runs
    outputs = llm.generate(prompts, PARAMS, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    # the placeholders span two chunks, yet each distinct image went through the tower once
    # (random_image(1) is in two prompts: encoded once, keyed by its hash)
    assert _runner(llm).mm.num_encoder_runs - runs_before == 3
    # the image rows changed the answer (the same text with another image differs)
    assert expected[0] != _expected(tiny_llava_dir, hf, llm, {
        **prompts[0], "multi_modal_data": {"image": random_image(3)}})


def test_prefix_cache_keyed_by_image(tiny_llava_dir, hf, llm):
    text = "USER: " + "some long shared text before the picture " * 2 + "<image>\nDescribe it."
    first = {"prompt": text, "multi_modal_data": {"image": random_image(10)}}
    other = {"prompt": text, "multi_modal_data": {"image": random_image(11)}}
    image_offset = llm.llm_engine.input_processor.process_prompt(first).mm_features[0].offset
    assert image_offset >= 16  # at least one full block before the image
    (a,) = llm.generate([first], PARAMS, use_tqdm=False)
    runs = _runner(llm).mm.num_encoder_runs
    (b,) = llm.generate([first], PARAMS, use_tqdm=False)
    assert _runner(llm).mm.num_encoder_runs == runs  # the image's blocks hit: no encoding
    (c,) = llm.generate([other], PARAMS, use_tqdm=False)
    expected_first = _expected(tiny_llava_dir, hf, llm, first)
    expected_other = _expected(tiny_llava_dir, hf, llm, other)
    assert a.outputs[0].token_ids == b.outputs[0].token_ids == expected_first
    assert c.outputs[0].token_ids == expected_other != expected_first
    # same image: the blocks through the image hit; another image: only the text before it
    assert b.num_cached_tokens > image_offset + 16
    assert c.num_cached_tokens == image_offset // 16 * 16


def test_prompt_checks(llm):
    image = random_image(5)
    with pytest.raises(ValueError, match="placeholders"):
        llm.generate({"prompt": "no placeholder here", "multi_modal_data": {"image": image}},
                     PARAMS, use_tqdm=False)
    with pytest.raises(ValueError, match="at most 2"):
        llm.generate({"prompt": "<image> <image> <image>",
                      "multi_modal_data": {"image": [image] * 3}}, PARAMS, use_tqdm=False)
    with pytest.raises(ValueError, match="2 image placeholders and 1 images"):
        llm.generate({"prompt": "<image> <image>", "multi_modal_data": {"image": image}},
                     PARAMS, use_tqdm=False)
    with pytest.raises(ValueError, match="no images"):
        llm.generate("a prompt with <image> but no image", PARAMS, use_tqdm=False)
    with pytest.raises(ValueError, match="PIL"):
        llm.generate({"prompt": "<image>", "multi_modal_data": {"image": b"bytes"}}, PARAMS,
                     use_tqdm=False)
    # the engine still serves after the refusals
    assert llm.generate("still serving", PARAMS, use_tqdm=False)[0].outputs[0].token_ids


def test_block_hashes_mix_in_the_image():
    import numpy as np

    from pagedllm.core.block_hash import make_block_hasher
    from pagedllm.multimodal.inputs import MultiModalFeature
    from pagedllm.request import Request

    def hashes(identifier: str) -> list[int]:
        feature = MultiModalFeature("image", identifier, 20, 8, np.zeros(1, np.float32))
        request = Request("r", list(range(48)), PARAMS, 8, block_hasher=make_block_hasher(16),
                          mm_features=[feature])
        return request.block_hashes

    a, b = hashes("a"), hashes("b")
    assert a[0] == b[0]  # before the image
    assert a[1] != b[1]  # holds the image's placeholders
    assert a[2] != b[2]  # after it: chained
    assert hashes("a") == a


def test_preemption_reencodes_and_matches_hf(tiny_llava_dir, hf):
    """6 blocks of 16 tokens for three image prompts of ~30 tokens growing by 24: requests are
    preempted (their KV dropped) and recomputed on their return, reading their image's rows
    from the encoder cache (which keeps them: nothing else needs the room)."""
    small = LLM(tiny_llava_dir, num_gpu_blocks_override=6, enable_prefix_caching=False,
                max_model_len=96, max_num_batched_tokens=16)
    engine = small.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = [{"prompt": f"USER: <image>\nPicture {i}? ASSISTANT:",
                "multi_modal_data": {"image": random_image(20 + i)}} for i in range(3)]
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    finished, preemptions = run_to_completion(engine)
    assert preemptions > 0, "6 blocks of 16 tokens must force preemption"
    for i, prompt in enumerate(prompts):
        ids = engine.input_processor.process_prompt(prompt).prompt_token_ids
        images = [prompt["multi_modal_data"]["image"]]
        assert finished[i] == hf_llava_greedy(tiny_llava_dir, hf, ids, images, 24), i
    assert _runner(small).mm.num_encoder_runs == 3  # once per image despite the preemptions


def test_chat_with_image_url_part(tiny_llava_dir, hf, llm):
    from tests.multimodal.conftest import data_url

    image = random_image(30)
    (out,) = llm.chat([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image)}},
        {"type": "text", "text": "What is shown?"}]}], PARAMS, use_tqdm=False)
    image_id = hf.config.image_token_index
    assert out.prompt_token_ids.count(image_id) == 16
    assert "<image>\nWhat is shown?" in out.prompt
    assert out.outputs[0].token_ids == hf_llava_greedy(tiny_llava_dir, hf, out.prompt_token_ids,
                                                       [image], MAX_TOKENS)
    with pytest.raises(ValueError, match="base64"):
        llm.chat([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}], PARAMS,
            use_tqdm=False)


def test_prompt_logprobs_match_hf(tiny_llava_dir, hf, llm):
    """Every prompt position's log-probabilities (text and image rows, the prefill chunked
    through the image) within 1e-4 of HF's: what the greedy tokens could hide."""
    import torch
    from transformers import AutoImageProcessor

    image = random_image(40)
    prompt = {"prompt": "USER: <image>\nWhat is in the picture? ASSISTANT:",
              "multi_modal_data": {"image": image}}
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=2)
    (out,) = llm.generate([prompt], params, use_tqdm=False)
    ids = out.prompt_token_ids
    pixels = AutoImageProcessor.from_pretrained(tiny_llava_dir)(
        images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0]
    reference = torch.log_softmax(logits.float(), dim=-1)
    checked = 0
    for position, entry in enumerate(out.prompt_logprobs[1:]):  # position predicts position+1
        for token, logprob in entry.items():
            assert abs(logprob.logprob - reference[position, token].item()) < 1e-4, position
            checked += 1
    assert checked >= 2 * (len(ids) - 1)
