"""Tiny random InternVL (transformers' format) through the offline engine against HF
transformers (fp32 greedy): dynamic tiling (images of different shapes take different tile
counts), a mixed batch with a text-only prompt, chunked prefill through the image rows and a
prefix hit."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from tests.multimodal.conftest import (
    INTERNVL_IMAGE,
    assert_prompt_logprobs_match,
    hf_internvl_greedy,
    random_image,
)
from tests.multimodal.vlm_checks import expected_tokens, load_hf

MAX_TOKENS = 5
PARAMS = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def hf(tiny_internvl_dir):
    return load_hf(tiny_internvl_dir, "InternVLForConditionalGeneration")


def test_tiled_images_match_hf(tiny_internvl_dir, hf):
    llm = LLM(tiny_internvl_dir, kv_cache_memory="16MiB", max_num_batched_tokens=16,
              limit_mm_per_prompt={"image": 2})
    prompts = [
        {"prompt": f"USER: {INTERNVL_IMAGE}\nWhat is this? ASSISTANT:",
         "multi_modal_data": {"image": random_image(1, (40, 90))}},
        {"prompt": "Tell me a story about the weather today, please."},
        {"prompt": f"USER: {INTERNVL_IMAGE} and {INTERNVL_IMAGE}? ASSISTANT:",
         "multi_modal_data": {"image": [random_image(2, (30, 30)), random_image(3, (90, 40))]}},
    ]
    processed = [llm.llm_engine.input_processor.process_prompt(p) for p in prompts]
    lengths = [f.length for p in processed for f in p.mm_features or ()]
    assert len(set(lengths)) > 1, lengths  # tile counts follow the shapes
    expected = [expected_tokens(hf_internvl_greedy, tiny_internvl_dir, hf, llm, p, MAX_TOKENS)
                for p in prompts]
    outputs = llm.generate(prompts, PARAMS, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    (again,) = llm.generate([prompts[0]], PARAMS, use_tqdm=False)
    assert again.outputs[0].token_ids == expected[0]
    assert again.num_cached_tokens >= 16

    # every position's log-probabilities, image rows included, equal HF's
    import torch
    from transformers import AutoImageProcessor

    pixels = AutoImageProcessor.from_pretrained(tiny_internvl_dir)(
        images=[prompts[0]["multi_modal_data"]["image"]], crop_to_patches=True,
        return_tensors="pt")["pixel_values"]
    assert_prompt_logprobs_match(llm, prompts[0], lambda ids: hf(
        input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0])
