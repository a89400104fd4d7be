"""Tiny random LLaVA-NeXT (AnyRes) through the offline engine against HF transformers (fp32
greedy): images of different shapes take different tile grids, unpadding and token counts; a
mixed batch with text-only prompts, chunked prefill through the image rows, a prefix hit."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from tests.multimodal.conftest import (
    assert_prompt_logprobs_match,
    hf_llava_next_greedy,
    random_image,
)
from tests.multimodal.vlm_checks import expected_tokens, load_hf

MAX_TOKENS = 5
PARAMS = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def hf(tiny_llava_next_dir):
    return load_hf(tiny_llava_next_dir, "LlavaNextForConditionalGeneration")


@pytest.fixture(scope="module")
def llm(tiny_llava_next_dir):
    return LLM(tiny_llava_next_dir, kv_cache_memory="16MiB", max_num_batched_tokens=32,
               limit_mm_per_prompt={"image": 2})


def _expected(model_dir, hf, llm, prompt: dict) -> list[int]:
    return expected_tokens(hf_llava_next_greedy, model_dir, hf, llm, prompt, MAX_TOKENS)


def test_anyres_mixed_batch_matches_hf(tiny_llava_next_dir, hf, llm):
    prompts = [
        {"prompt": "USER: <image>\nWhat is this? ASSISTANT:",
         "multi_modal_data": {"image": random_image(1, (40, 90))}},  # wide: 28x56, unpadded
        {"prompt": "Tell me a story about the weather today, please."},
        {"prompt": "USER: <image> and <image>? ASSISTANT:",
         "multi_modal_data": {"image": [random_image(2, (90, 35)), random_image(3, (50, 50))]}},
    ]
    processed = [llm.llm_engine.input_processor.process_prompt(p) for p in prompts]
    lengths = [f.length for p in processed for f in p.mm_features or ()]
    assert len(set(lengths)) == 3, lengths  # each shape its own grid / unpadding
    expected = [_expected(tiny_llava_next_dir, hf, llm, p) for p in prompts]
    outputs = llm.generate(prompts, PARAMS, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    # a prefix hit through the image gives the same tokens
    (again,) = llm.generate([prompts[0]], PARAMS, use_tqdm=False)
    assert again.outputs[0].token_ids == expected[0]
    assert again.num_cached_tokens >= processed[0].mm_features[0].end // 16 * 16 > 0


def test_prompt_logprobs_match_hf(tiny_llava_next_dir, hf, llm):
    """Every prompt position's log-probabilities (a tall image: unpadded columns) within 1e-4
    of HF's: the tile layout and newline rows, beyond what greedy tokens show."""
    import torch
    from transformers import AutoImageProcessor

    image = random_image(7, (90, 35))
    prompt = {"prompt": "USER: <image>\nWhat is this? ASSISTANT:",
              "multi_modal_data": {"image": image}}
    processed = AutoImageProcessor.from_pretrained(tiny_llava_next_dir)(images=[image],
                                                                        return_tensors="pt")
    assert_prompt_logprobs_match(llm, prompt, lambda ids: hf(
        input_ids=torch.tensor([ids]), pixel_values=processed["pixel_values"],
        image_sizes=processed["image_sizes"]).logits[0])
