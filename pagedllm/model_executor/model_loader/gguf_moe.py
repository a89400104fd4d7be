"""The transformers configs of llama.cpp's `dbrx` and `glm4moe` GGUFs, from the metadata its
converter (convert_hf_to_gguf.py) writes for them.

DBRX: the converter keeps d_model / n_heads / n_layers / kv_n_heads / rope_theta / clip_qkv
(`attention.clamp_kqv`) and the expert counts; llama.cpp's DBRX graph normalizes the top-k
weights by their sum (moe_normalize_expert_weights = 1, every released DBRX's value).

GLM-4-MoE: `block_count` counts the next-token-prediction (MTP) layers the converter appends
(`nextn_predict_layers`), which we do not run; the router is sigmoid with the correction bias;
the rotary covers `rope.dimension_count` of each head.
"""

from __future__ import annotations

from typing import Any

from pagedllm.model_executor.model_loader.gguf_file import GGUFFile


def dbrx_config(reader: GGUFFile, common: dict[str, Any]) -> Any:
    from transformers import DbrxConfig

    def meta(key: str, default: Any = None) -> Any:
        return reader.fields.get(f"dbrx.{key}", default)

    normalize = bool(meta("expert_weights_norm", True))
    theta = meta("rope.freq_base", 1e4)
    return DbrxConfig(
        architectures=common["architectures"],
        vocab_size=common["vocab_size"],
        d_model=common["hidden_size"],
        n_heads=common["num_attention_heads"],
        n_layers=common["num_hidden_layers"],
        max_seq_len=common["max_position_embeddings"],
        attn_config={"kv_n_heads": common["num_key_value_heads"],
                     "clip_qkv": meta("attention.clamp_kqv"),
                     "rope_theta": theta},
        ffn_config={"ffn_hidden_size": common["intermediate_size"],
                    "moe_num_experts": meta("expert_count"),
                    "moe_top_k": meta("expert_used_count"),
                    "moe_normalize_expert_weights": 1.0 if normalize else None},
        # (transformers 5 reads the theta from here, not from attn_config)
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        tie_word_embeddings=common["tie_word_embeddings"],
        bos_token_id=common["bos_token_id"],
        eos_token_id=common["eos_token_id"],
        pad_token_id=common["pad_token_id"],
    )  # fmt: skip


def glm4_moe_config(reader: GGUFFile, common: dict[str, Any], rope_parameters: Any) -> Any:
    from transformers import Glm4MoeConfig

    def meta(key: str, default: Any = None) -> Any:
        return reader.fields.get(f"glm4moe.{key}", default)

    tensor_names = {t.name for t in reader.tensors}
    head_dim = common["head_dim"]
    partial = meta("rope.dimension_count", head_dim // 2) / head_dim
    n_group = meta("expert_group_count") or 1
    fields = dict(
        common,
        num_hidden_layers=common["num_hidden_layers"] - meta("nextn_predict_layers", 0),
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        use_qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        partial_rotary_factor=partial,
        moe_intermediate_size=meta("expert_feed_forward_length"),
        n_routed_experts=meta("expert_count"),
        num_experts_per_tok=meta("expert_used_count"),
        n_shared_experts=meta("expert_shared_count", 0),
        first_k_dense_replace=meta("leading_dense_block_count", 0),
        routed_scaling_factor=meta("expert_weights_scale", 1.0),
        norm_topk_prob=bool(meta("expert_weights_norm", False)),
        n_group=n_group,
        topk_group=meta("expert_group_used_count") or n_group,
        rope_parameters={**rope_parameters, "partial_rotary_factor": partial},
    )
    return Glm4MoeConfig(**fields)
