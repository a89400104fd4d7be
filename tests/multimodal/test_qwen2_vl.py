"""Tiny random Qwen2-VL through the offline engine against HF transformers (fp32 greedy):
dynamic resolution (images of different sizes take different token counts), M-RoPE positions
through a mixed batch with chunked prefill splitting the image tokens, decode and prefix-cache
hits, and the positions themselves against HF's get_rope_index."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from tests.engine_internals import model_runner as _runner
from tests.engine_internals import run_to_completion
from tests.multimodal.conftest import (
    QWEN_IMAGE,
    assert_prompt_logprobs_match,
    hf_qwen2_vl_greedy,
    random_image,
)
from tests.multimodal.vlm_checks import expected_tokens, load_hf

MAX_TOKENS = 6
PARAMS = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def hf(tiny_qwen2_vl_dir):
    return load_hf(tiny_qwen2_vl_dir, "Qwen2VLForConditionalGeneration")


@pytest.fixture(scope="module")
def llm(tiny_qwen2_vl_dir):
    # an 8-token budget: every image's tokens are split over two or more steps
    return LLM(tiny_qwen2_vl_dir, kv_cache_memory="16MiB", max_num_batched_tokens=8,
               limit_mm_per_prompt={"image": 2})


def _expected(model_dir, hf, llm, prompt: dict) -> list[int]:
    return expected_tokens(hf_qwen2_vl_greedy, model_dir, hf, llm, prompt, MAX_TOKENS)


def test_mixed_batch_matches_hf(tiny_qwen2_vl_dir, hf, llm):
    prompts = [
        {"prompt": f"USER: {QWEN_IMAGE}What is in the picture? ASSISTANT:",
         "multi_modal_data": {"image": random_image(1)}},  # 40x50: 3x4 merged = 12 tokens
        {"prompt": "Tell me a story about the weather today, please."},
        {"prompt": f"USER: a question {QWEN_IMAGE} about this ASSISTANT:",
         "multi_modal_data": {"image": random_image(2, (64, 30))}},  # taller than wide
        {"prompt": f"USER: {QWEN_IMAGE} and {QWEN_IMAGE}: which differs? ASSISTANT:",
         "multi_modal_data": {"image": [random_image(4, (30, 60)), random_image(1)]}},
    ]
    processed = [llm.llm_engine.input_processor.process_prompt(p) for p in prompts]
    lengths = {f.length for p in processed for f in p.mm_features or ()}
    grids = {f.grid_thw for p in processed for f in p.mm_features or ()}
    assert len(lengths) > 1 and all(g[1] != g[2] for g in grids)  # dynamic, non-square
    expected = [_expected(tiny_qwen2_vl_dir, hf, llm, p) for p in prompts]
    runs_before = _runner(llm).mm.num_encoder_runs
    outputs = llm.generate(prompts, PARAMS, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    # once per distinct image (random_image(1) is in two prompts: one run, keyed by its hash)
    assert _runner(llm).mm.num_encoder_runs - runs_before == 3
    # the image rows changed the answer (the same text with another image differs)
    assert expected[0] != _expected(tiny_qwen2_vl_dir, hf, llm, {
        **prompts[0], "multi_modal_data": {"image": random_image(3)}})


def test_prefix_hit_on_the_same_image(tiny_qwen2_vl_dir, hf, llm):
    """The second run of a prompt hits the cache through the image (its positions start past
    the image, so the M-RoPE shift must come from the features, not from a prefill)."""
    text = ("USER: " + "some long shared text before the picture " * 2 + QWEN_IMAGE
            + "Say what it shows, in a few words.")
    first = {"prompt": text, "multi_modal_data": {"image": random_image(10)}}
    other = {"prompt": text, "multi_modal_data": {"image": random_image(11)}}
    feature = llm.llm_engine.input_processor.process_prompt(first).mm_features[0]
    (a,) = llm.generate([first], PARAMS, use_tqdm=False)
    runs = _runner(llm).mm.num_encoder_runs
    (b,) = llm.generate([first], PARAMS, use_tqdm=False)
    assert _runner(llm).mm.num_encoder_runs == runs  # the image's blocks hit: no encoding
    (c,) = llm.generate([other], PARAMS, use_tqdm=False)
    expected_first = _expected(tiny_qwen2_vl_dir, hf, llm, first)
    assert a.outputs[0].token_ids == b.outputs[0].token_ids == expected_first
    assert c.outputs[0].token_ids == _expected(tiny_qwen2_vl_dir, hf, llm, other)
    assert b.num_cached_tokens >= feature.end
    assert c.num_cached_tokens == feature.offset // 16 * 16


def test_mrope_positions_match_hf_rope_index(tiny_qwen2_vl_dir, hf, llm):
    """Every chunking of a two-image prompt, then decode indices, against HF's positions."""
    import numpy as np
    import torch

    from pagedllm.multimodal.mrope import mrope_positions

    prompt = {"prompt": f"A {QWEN_IMAGE} b c {QWEN_IMAGE} d e f",
              "multi_modal_data": {"image": [random_image(5, (30, 60)), random_image(6)]}}
    processed = llm.llm_engine.input_processor.process_prompt(prompt)
    ids = torch.tensor([processed.prompt_token_ids])
    grids = torch.tensor([f.grid_thw for f in processed.mm_features])
    expected, delta = hf.model.get_rope_index(
        ids, (ids == hf.config.image_token_id).int(), image_grid_thw=grids)
    expected = expected[:, 0].numpy()
    n = ids.shape[1]
    for chunk in (1, 5, n):
        got = np.concatenate([mrope_positions(processed.mm_features, 2, s, min(chunk, n - s))
                              for s in range(0, n, chunk)], axis=1)
        np.testing.assert_array_equal(got, expected)
    decode = mrope_positions(processed.mm_features, 2, n, 3)
    np.testing.assert_array_equal(decode, np.tile(np.arange(n, n + 3) + int(delta), (3, 1)))
    assert int(delta) < 0  # the images took more tokens than positions


def test_prompt_checks(llm):
    image = random_image(5)
    with pytest.raises(ValueError, match="placeholders"):
        llm.generate({"prompt": "no placeholder", "multi_modal_data": {"image": image}},
                     PARAMS, use_tqdm=False)
    with pytest.raises(ValueError, match="no images"):
        llm.generate(f"a prompt with {QWEN_IMAGE} but no image", PARAMS, use_tqdm=False)


def test_prompt_logprobs_match_hf(tiny_qwen2_vl_dir, hf, llm):
    """Every prompt position's log-probabilities (two non-square images, the prefill chunked
    through them) within 1e-4 of HF's: M-RoPE and row order, beyond what greedy tokens show."""
    import torch
    from transformers import AutoImageProcessor

    images = [random_image(12, (30, 60)), random_image(13, (60, 40))]
    prompt = {"prompt": f"USER: {QWEN_IMAGE} then {QWEN_IMAGE} differ how? ASSISTANT:",
              "multi_modal_data": {"image": images}}
    processed = AutoImageProcessor.from_pretrained(tiny_qwen2_vl_dir)(images=images,
                                                                      return_tensors="pt")

    def logits(ids):
        ids = torch.tensor([ids])
        return hf(input_ids=ids, mm_token_type_ids=(ids == hf.config.image_token_id).int(),
                  pixel_values=processed["pixel_values"],
                  image_grid_thw=processed["image_grid_thw"]).logits[0]

    assert_prompt_logprobs_match(llm, prompt, logits)


def test_preemption_recomputes_positions_and_matches_hf(tiny_qwen2_vl_dir, hf):
    """5 blocks of 16 tokens for three image prompts of ~25 tokens growing by 20: requests are
    preempted and recomputed on their return (the M-RoPE shift comes back from the features)."""
    small = LLM(tiny_qwen2_vl_dir, num_gpu_blocks_override=5, enable_prefix_caching=False,
                max_model_len=64, max_num_batched_tokens=16)
    engine = small.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    prompts = [{"prompt": f"USER: {QWEN_IMAGE}Picture {i}? ASSISTANT:",
                "multi_modal_data": {"image": random_image(20 + i)}} for i in range(3)]
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    finished, preemptions = run_to_completion(engine)
    assert preemptions > 0, "5 blocks of 16 tokens must force preemption"
    for i, prompt in enumerate(prompts):
        ids = engine.input_processor.process_prompt(prompt).prompt_token_ids
        assert finished[i] == hf_qwen2_vl_greedy(
            tiny_qwen2_vl_dir, hf, ids, [prompt["multi_modal_data"]["image"]], 20), i
