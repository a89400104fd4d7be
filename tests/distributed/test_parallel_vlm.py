"""Vision-language models under -tp 2 and -pp 2: the language model is split (heads / MLP
columns / vocabulary over the ranks, or its 2 layers over 2 stages), the vision tower and
projector are replicated on every rank and run on the first stage only. Greedy tokens of an
image prompt and a text-only prompt, the image's placeholders split over prefill chunks, equal HF
transformers' (fp32); -tp 1 equals HF in tests/multimodal."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from tests.multimodal.conftest import (  # noqa: F401  (session fixtures, shared with them)
    IMAGE_TOKEN,
    INTERNVL_IMAGE,
    QWEN_IMAGE,
    hf_internvl_greedy,
    hf_llava_greedy,
    hf_llava_next_greedy,
    hf_qwen2_vl_greedy,
    random_image,
    tiny_internvl_dir,
    tiny_llava_dir,
    tiny_llava_next_dir,
    tiny_qwen2_vl_dir,
)

MAX_TOKENS = 5

FAMILIES = {
    # family: (model dir fixture, image placeholder, HF greedy, HF class)
    "llava": ("tiny_llava_dir", IMAGE_TOKEN, hf_llava_greedy, "LlavaForConditionalGeneration"),
    "llava_next": ("tiny_llava_next_dir", IMAGE_TOKEN, hf_llava_next_greedy,
                   "LlavaNextForConditionalGeneration"),
    "qwen2_vl": ("tiny_qwen2_vl_dir", QWEN_IMAGE, hf_qwen2_vl_greedy,
                 "Qwen2VLForConditionalGeneration"),
    "internvl": ("tiny_internvl_dir", INTERNVL_IMAGE, hf_internvl_greedy,
                 "InternVLForConditionalGeneration"),
}


@pytest.mark.parametrize("family, tp, pp", [
    ("llava", 2, 1), ("llava_next", 1, 2), ("qwen2_vl", 1, 2), ("internvl", 2, 1),
])  # fmt: skip  (each family once, each split twice: an engine start per case is the cost)
def test_vlm_split_equals_hf(request, family, tp, pp):
    import transformers

    fixture, placeholder, hf_greedy, hf_cls = FAMILIES[family]
    model_dir = request.getfixturevalue(fixture)
    prompts = [
        {"prompt": f"USER: {placeholder}\nWhat is in the picture? ASSISTANT:",
         "multi_modal_data": {"image": random_image(1)}},
        {"prompt": "Tell me a story about the weather today, please."},
    ]
    llm = LLM(model_dir, kv_cache_memory="16MiB", max_num_batched_tokens=16,
              limit_mm_per_prompt={"image": 1}, tensor_parallel_size=tp,
              pipeline_parallel_size=pp)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        processed = [llm.llm_engine.input_processor.process_prompt(p) for p in prompts]
    finally:
        llm.llm_engine.engine_core.shutdown()
    hf = getattr(transformers, hf_cls).from_pretrained(model_dir).eval()
    expected = [hf_greedy(model_dir, hf, p.prompt_token_ids,
                          [q["multi_modal_data"]["image"]] if "multi_modal_data" in q else [],
                          MAX_TOKENS)
                for p, q in zip(processed, prompts)]  # fmt: skip
    assert processed[0].mm_features and processed[0].mm_features[0].length > 4
    assert [o.outputs[0].token_ids for o in outputs] == expected
