"""The encoder cache keyed by image hash: the scheduler's accounting (EncoderCacheManager) on its
own, then through the engine with the tiny LLaVA and Qwen2-VL against HF transformers: the same
image in two requests or twice in one prompt runs the vision tower once, and a budget smaller
than two images makes a request wait (its chunk cut before its image) while chunked prefill
splits the image tokens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.core.encoder_cache_manager import EncoderCacheManager
from tests.multimodal.conftest import (
    QWEN_IMAGE,
    hf_llava_greedy,
    hf_qwen2_vl_greedy,
    random_image,
)

PARAMS = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


@dataclass
class _Image:
    identifier: str
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def test_manager_references_evicts_oldest_freeable_and_cuts_chunks():
    cache = EncoderCacheManager(10)
    a, b = _Image("a", 2, 6), _Image("b", 12, 6)
    plan = cache.schedule_inputs("r1", [a, b], 0, 8)
    assert (plan.num_new_tokens, plan.to_encode) == (8, [0])
    # b does not fit beside the referenced a: the chunk stops before b's first placeholder
    plan = cache.schedule_inputs("r1", [a, b], 8, 8)
    assert (plan.num_new_tokens, plan.to_encode, cache.num_waits) == (4, [], 1)
    cache.release_consumed("r1", [a, b], 12)  # a's rows are in the KV cache: freeable
    assert cache.cached == {"a": set()} and cache.num_freeable_slots == 10
    plan = cache.schedule_inputs("r1", [a, b], 12, 8)  # evicts a (the oldest freeable)
    assert (plan.num_new_tokens, plan.to_encode, cache.take_freed()) == (8, [1], ["a"])
    # another request with b: a hit, no encoding; the entry stays until both are done
    plan = cache.schedule_inputs("r2", [_Image("b", 0, 6)], 0, 6)
    assert (plan.to_encode, cache.num_hits, cache.cached["b"]) == ([], 1, {"r1", "r2"})
    cache.free("r1")
    assert cache.cached["b"] == {"r2"} and cache.num_free_slots == 4
    cache.free("r2")
    assert cache.cached == {"b": set()} and cache.num_freeable_slots == 10
    assert cache.held_by == {}


def test_manager_one_image_twice_in_a_prompt_and_cancel():
    cache = EncoderCacheManager(8)
    first, again = _Image("x", 0, 6), _Image("x", 10, 6)
    plan = cache.schedule_inputs("r", [first, again], 0, 16)
    assert plan.to_encode == [0] and cache.num_used_slots == 6  # counted once
    cache.release_consumed("r", [first, again], 8)
    assert cache.cached["x"] == {"r"}  # its second run of placeholders still reads it
    cache.release_consumed("r", [first, again], 16)
    assert cache.cached["x"] == set()
    # a plan whose chunk is then not scheduled (its KV did not fit) gives its references back
    plan = cache.schedule_inputs("s", [_Image("x", 0, 6)], 0, 6)
    cache.cancel("s", plan)
    assert cache.cached["x"] == set() and cache.num_freeable_slots == 8
    # without chunked prefill a chunk is all or nothing
    plan = cache.schedule_inputs("t", [_Image("y", 0, 6), _Image("z", 6, 6)], 0, 12,
                                 allow_partial=False)
    assert plan.num_new_tokens == 0 and cache.cached.get("y") == set()


def _core(llm: LLM):
    return llm.llm_engine.engine_core.engine_core


def _runner(llm: LLM):
    return _core(llm).executor.driver_worker.model_runner


def test_llava_same_image_across_requests_and_twice_in_a_prompt(tiny_llava_dir):
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    llm = LLM(tiny_llava_dir, kv_cache_memory="4MiB", max_num_batched_tokens=16,
              max_model_len=128, limit_mm_per_prompt={"image": 2})
    image, other = random_image(50), random_image(51)
    prompts = [
        {"prompt": "USER: <image>\nWhat is it? ASSISTANT:", "multi_modal_data": {"image": image}},
        {"prompt": "USER: <image> then <image>: same? ASSISTANT:",
         "multi_modal_data": {"image": [image, image]}},
        {"prompt": "USER: now <image>\nthis ASSISTANT:", "multi_modal_data": {"image": other}},
    ]
    outputs = llm.generate(prompts, PARAMS, use_tqdm=False)
    assert _runner(llm).mm.num_encoder_runs == 2  # two distinct images
    # a later request with the first image (other text before it: no prefix-cache hit)
    later = {"prompt": "SYSTEM: be brief. USER: <image>\nAgain? ASSISTANT:",
             "multi_modal_data": {"image": image}}
    (again,) = llm.generate([later], PARAMS, use_tqdm=False)
    assert again.num_cached_tokens == 0 and _runner(llm).mm.num_encoder_runs == 2
    for prompt, out in zip([*prompts, later], [*outputs, again]):
        images = prompt["multi_modal_data"]["image"]
        images = images if isinstance(images, list) else [images]
        assert out.outputs[0].token_ids == hf_llava_greedy(
            tiny_llava_dir, hf, out.prompt_token_ids, images, PARAMS.max_tokens)
    manager = _core(llm).scheduler.encoder_cache
    assert manager.num_hits >= 2 and manager.held_by == {}
    assert set(manager.cached) == {s for s in manager.cached if not manager.cached[s]}


def test_qwen2_vl_tight_budget_waits_and_matches_hf(tiny_qwen2_vl_dir):
    """A 14-token encoder cache holds one 12-token image: of two requests started together the
    second waits (its chunk cut before its image) until the first's image is in the KV cache;
    a 16-token step budget splits the images over two steps. A 16-token image is refused."""
    from transformers import Qwen2VLForConditionalGeneration

    hf = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2_vl_dir).eval()
    llm = LLM(tiny_qwen2_vl_dir, kv_cache_memory="4MiB", max_num_batched_tokens=16,
              max_model_len=128, encoder_cache_size=14)
    # the first image ends past the first step; the others start early in their prompts, so
    # the second request's share of the next step reaches its image while the first's still
    # holds the cache
    texts = [f"Hi there {QWEN_IMAGE}What?",
             f"{QWEN_IMAGE}What is 1?", f"{QWEN_IMAGE}What is 2?"]
    prompts = [{"prompt": text, "multi_modal_data": {"image": random_image(60 + i)}}
               for i, text in enumerate(texts)]
    processed = [llm.llm_engine.input_processor.process_prompt(p) for p in prompts]
    assert [p.mm_features[0].length for p in processed] == [12, 12, 12]
    first = processed[0].mm_features[0]
    assert first.offset < 16 < first.end and len(processed[0].prompt_token_ids) - 16 < 10
    assert processed[1].mm_features[0].offset < 16 - (len(processed[0].prompt_token_ids) - 16)
    outputs = llm.generate(prompts, PARAMS, use_tqdm=False)
    manager, cache = _core(llm).scheduler.encoder_cache, _runner(llm).mm.encoder_cache
    assert manager.num_waits > 0  # the cache, not the token budget, held requests back
    assert cache.peak_tokens == 12 <= manager.cache_size  # never two images at once
    assert cache.num_encoder_runs == 3 and len(cache) == 1  # the evicted ones were dropped
    for prompt, out in zip(prompts, outputs):
        assert out.outputs[0].token_ids == hf_qwen2_vl_greedy(
            tiny_qwen2_vl_dir, hf, out.prompt_token_ids, [prompt["multi_modal_data"]["image"]],
            PARAMS.max_tokens)
    # the last image is still cached (a new request reuses it); the first was evicted
    runs = cache.num_encoder_runs
    llm.generate([{"prompt": f"Again: {QWEN_IMAGE}", "multi_modal_data": {
        "image": random_image(62)}}], PARAMS, use_tqdm=False)
    assert cache.num_encoder_runs == runs
    llm.generate([{"prompt": f"Again: {QWEN_IMAGE}", "multi_modal_data": {
        "image": random_image(60)}}], PARAMS, use_tqdm=False)
    assert cache.num_encoder_runs == runs + 1
    with pytest.raises(ValueError, match="encoder_cache_size is 14"):
        llm.generate({"prompt": QWEN_IMAGE, "multi_modal_data": {
            "image": random_image(1, (56, 56))}}, PARAMS, use_tqdm=False)
