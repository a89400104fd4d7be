"""DeepSeek-V2 / V3 (multi-head latent attention with the latent cached, fine-grained MoE with
shared experts and grouped top-k routing, first_k_dense_replace dense layers) against HF
transformers through the whole engine; the paged cache holds only the latent."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.config import CacheConfig
from pagedllm.model_executor.layers.attention import attention_layers
from pagedllm.model_executor.layers.linear import UnquantizedLinearMethod
from pagedllm.model_executor.model_loader.config import load_model_config
from pagedllm.worker.execution_strategy import EAGER
from pagedllm.worker.kv_cache_alloc import plan_kv_cache
from tests.engine_internals import engine_core
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

MLA = {"num_key_value_heads": 4, "kv_lora_rank": 16, "qk_rope_head_dim": 8,
       "qk_nope_head_dim": 16, "v_head_dim": 12, "head_dim": 8}
MOE = {"n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
       "moe_intermediate_size": 32, "first_k_dense_replace": 1}
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32,
        "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8,
        "original_max_position_embeddings": 128}
VARIANTS = {
    # V2-Lite's shape: no q_lora_rank, plain top-k
    "v2_lite": ("DeepseekV2Config", {**MLA, **MOE, "q_lora_rank": None, "topk_method": "greedy"}),
    # V2: q through its low-rank pair, group-limited routing
    "v2": ("DeepseekV2Config", {**MLA, **MOE, "q_lora_rank": 32, "n_shared_experts": 2,
                                "topk_method": "group_limited_greedy", "n_group": 4,
                                "topk_group": 2, "num_experts_per_tok": 3,
                                "routed_scaling_factor": 2.0}),
    # V3: sigmoid scores with the correction bias, renormalized, scaled
    "v3": ("DeepseekV3Config", {**MLA, **MOE, "q_lora_rank": 32, "n_group": 4, "topk_group": 2,
                                "norm_topk_prob": True, "routed_scaling_factor": 2.5}),
    # V2 with YaRN: frequencies blended, cos/sin and the softmax scale by mscale / mscale_all_dim
    "v2_yarn": ("DeepseekV2Config", {**MLA, **MOE, "q_lora_rank": None, "topk_method": "greedy",
                                     "rope_parameters": YARN}),
}  # fmt: skip


def _model(tiny_model_factory, variant: str) -> str:
    config_cls, overrides = VARIANTS[variant]
    return tiny_model_factory(config_cls, **overrides)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    llm = assert_engine_matches_hf(_model(tiny_model_factory, variant))
    worker = engine_core(llm).executor.driver_worker
    assert worker.execution.name == EAGER and worker.execution.declined
    _, overrides = VARIANTS[variant]
    latent = overrides["kv_lora_rank"] + overrides["qk_rope_head_dim"]
    for layer in attention_layers(worker.model):
        cache = layer.kv_cache  # [num_blocks, block_size, L + R]: the latent, no K/V pair
        num_slots = cache.shape[0] * cache.shape[1]
        assert cache.nbytes // num_slots == latent * cache.element_size() == latent * 4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(_model(tiny_model_factory, variant))


def test_cache_is_sized_by_the_latent(tiny_model_factory):
    """Bytes per token and layer: (kv_lora_rank + qk_rope_head_dim) x dtype bytes, where a K/V
    cache of the same heads would take 2 x heads x (qk_nope + qk_rope) x dtype bytes."""
    config = load_model_config(_model(tiny_model_factory, "v3"))
    _, overrides = VARIANTS["v3"]
    latent = overrides["kv_lora_rank"] + overrides["qk_rope_head_dim"]
    assert config.use_mla and (config.num_kv_heads, config.head_dim) == (1, latent)
    for kv_cache_dtype, elem in (("auto", 4), ("fp16", 2)):
        cache = CacheConfig(block_size=16, kv_cache_memory=1 << 20, kv_cache_dtype=kv_cache_dtype)
        layout = plan_kv_cache(config, cache, torch.device("cpu"))
        per_token_layer = layout.bytes_per_block // (16 * config.num_hidden_layers)
        assert per_token_layer == latent * elem
    with pytest.raises(ValueError, match="latent attention"):
        plan_kv_cache(config, CacheConfig(kv_cache_dtype="int8"), torch.device("cpu"))


def test_int8_keeps_the_absorbed_projection_float(tiny_model_factory):
    """--quantization int8 quantizes the projections but not kv_b_proj, whose weight MLA
    absorbs into the query and output, nor the router; the engine still generates."""
    llm = LLM(_model(tiny_model_factory, "v3"), quantization="int8", kv_cache_memory="8MiB")
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    (out,) = llm.generate([[5, 6, 7, 8, 9]], params, use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 4
    model = engine_core(llm).executor.driver_worker.model
    attn = model.model.layers[0].self_attn
    assert attn.kv_b_proj.weight.dtype == torch.float32
    assert type(attn.kv_b_proj.quant_method) is UnquantizedLinearMethod
    assert type(attn.q_b_proj.quant_method) is not UnquantizedLinearMethod  # (the rest is)
