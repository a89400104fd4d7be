"""The transformers config of a llama.cpp `deepseek2` GGUF (DeepSeek-V2, V2-Lite, V3, R1), from
the metadata its converter writes: MLA's ranks and head sizes (`key_length_mla` /
`value_length_mla` in current files, where `key_length` is the cached latent's
kv_lora_rank + rope size; `key_length` / `value_length` in older ones), the MoE's counts, the
router's gating function (sigmoid: V3, softmax: V2), groups and weight scale/normalization, and
YaRN rope scaling.
"""

from __future__ import annotations

from typing import Any

from pagedllm.model_executor.model_loader.gguf_file import GGUFFile

_SIGMOID = 2
"""gguf.ExpertGatingFuncType.SIGMOID (1: SOFTMAX)."""


def deepseek2_config(reader: GGUFFile, common: dict[str, Any]) -> Any:
    from transformers import DeepseekV2Config, DeepseekV3Config

    def meta(key: str, default: Any = None) -> Any:
        return reader.fields.get(f"deepseek2.{key}", default)

    rope = meta("rope.dimension_count")
    key_mla = meta("attention.key_length_mla")
    if key_mla:
        nope, v_head = key_mla - rope, meta("attention.value_length_mla")
    else:
        nope, v_head = meta("attention.key_length") - rope, meta("attention.value_length")
    n_group = meta("expert_group_count") or 1
    fields = dict(
        common,
        num_key_value_heads=common["num_attention_heads"],  # (MLA: every head reads the latent)
        head_dim=rope,
        q_lora_rank=meta("attention.q_lora_rank") or None,
        kv_lora_rank=meta("attention.kv_lora_rank"),
        qk_rope_head_dim=rope,
        qk_nope_head_dim=nope,
        v_head_dim=v_head,
        n_routed_experts=meta("expert_count"),
        num_experts_per_tok=meta("expert_used_count"),
        n_shared_experts=meta("expert_shared_count"),
        moe_intermediate_size=meta("expert_feed_forward_length"),
        first_k_dense_replace=meta("leading_dense_block_count", 0),
        routed_scaling_factor=meta("expert_weights_scale", 1.0),
        norm_topk_prob=bool(meta("expert_weights_norm", False)),
        n_group=n_group,
        topk_group=meta("expert_group_used_count") or n_group,
        rope_parameters=_rope_parameters(meta),
    )
    if meta("expert_gating_func") == _SIGMOID:
        return DeepseekV3Config(**{**fields, "architectures": ["DeepseekV3ForCausalLM"]},
                                rope_interleave=True)  # fmt: skip
    method = "group_limited_greedy" if n_group > 1 else "greedy"
    return DeepseekV2Config(**fields, topk_method=method)


def _rope_parameters(meta: Any) -> dict[str, Any]:
    """DeepSeek's YaRN: llama.cpp keeps 0.1 * mscale_all_dim as yarn_log_multiplier; DeepSeek's
    configs set mscale equal to it (so cos/sin are unscaled and the softmax scale takes
    mscale_all_dim^2)."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": meta("rope.freq_base", 1e4)}
    scaling = meta("rope.scaling.type")
    if scaling in (None, "none"):
        return params
    if scaling != "yarn":
        raise ValueError(f"GGUF deepseek2 rope scaling {scaling!r} is not supported (yarn)")
    mscale_all_dim = meta("rope.scaling.yarn_log_multiplier", 0.0) / 0.1
    return {
        **params, "rope_type": "yarn", "factor": meta("rope.scaling.factor"),
        "original_max_position_embeddings": meta("rope.scaling.original_context_length"),
        "beta_fast": meta("rope.scaling.yarn_beta_fast", 32.0),
        "beta_slow": meta("rope.scaling.yarn_beta_slow", 1.0),
        "mscale": mscale_all_dim, "mscale_all_dim": mscale_all_dim,
    }  # fmt: skip
