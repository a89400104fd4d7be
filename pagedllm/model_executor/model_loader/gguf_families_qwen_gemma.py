"""llama.cpp GGUFs of Qwen2 / Qwen2-MoE / Qwen3 / Qwen3-MoE, Gemma / Gemma 2, Phi-3 and Mamba:
their HF configs from the metadata llama.cpp's converter (convert_hf_to_gguf.py) writes, their
tensor names, and the layout changes the converter makes that we undo.

What the converter does to each (and so what we read back):

- qwen2 / qwen3: HF's tensors under llama.cpp names, q/k rows as HF's (llama.cpp runs them with
  its NEOX rope, rotate-half as HF's: no permutation); Qwen2's q/k/v biases as `.bias`; Qwen3's
  per-head q/k norms as attn_q_norm / attn_k_norm.
- qwen2moe / qwen3moe: the routed experts stacked per projection ([E, I, H] gate/up, [E, H, I]
  down: the model's loader splits them, models/qwen2_moe.py); Qwen2-MoE's shared expert as
  *_shexp and its sigmoid gate as ffn_gate_inp_shexp. No `expert_weights_norm` key: llama.cpp's
  graphs fix the top-k renormalization per arch (off for qwen2moe, on for qwen3moe), so do we.
- gemma / gemma2: every norm stored as (1 + w) (gguf.py subtracts the 1); the embedding stored
  unscaled (the sqrt(hidden) scaling is the model's, in llama.cpp's graph as in HF); no output
  tensor (tied). Gemma 2 adds attn/final logit soft-capping, the sliding window (every even
  layer, llama.cpp's swa pattern 2 = HF's layer_types) and the sandwich norms. No rope base and
  no query_pre_attn_scalar in the file: llama.cpp uses 10 000 and head_dim, except for the
  46-layer 27B whose query scale is hidden / heads (its HF config's 144), as here.
- phi3: qkv_proj and gate_up_proj kept fused (attn_qkv, ffn_up), q/k rows as HF's (NEOX rope);
  partial rotary as rope.dimension_count; long-context "longrope" (su) scaling as two tensors,
  rope_factors_long / rope_factors_short, plus rope.scaling.attn_factor and
  original_context_length (no rope.scaling.type key); sliding_window 0 means none (Phi-4).
- mamba: the mixer under ssm_* names (no attention, head_count 0), conv1d squeezed to [I, K],
  A stored as -exp(A_log) (we take the log back), A and D without a `.weight` suffix; Falcon-Mamba
  is the same arch with ssm.dt_b_c_rms set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pagedllm.model_executor.model_loader.gguf_file import GGUFFile
from pagedllm.model_executor.model_loader.gguf_names import LLAMA_BLOCK_NAMES, table_hf_name

ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen2moe": "Qwen2MoeForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    # (FalconMambaForCausalLM where ssm.dt_b_c_rms is set: see _mamba_config)
    "mamba": "MambaForCausalLM",
}
"""GGUF `general.architecture` -> the HF architecture we load it as (joins GGUF_ARCHITECTURES)."""

NORM_PLUS_ONE = {"gemma", "gemma2"}
"""Archs whose norm weights the converter stores as (1 + w)."""

_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_MOE = {
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}
_SHARED_EXPERT = {
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
BLOCK_NAMES = {
    "qwen2": LLAMA_BLOCK_NAMES,
    "qwen3": {**LLAMA_BLOCK_NAMES, **_QK_NORMS},
    # (dense layers, if a file has any, keep ffn_gate / ffn_up / ffn_down)
    "qwen2moe": {**LLAMA_BLOCK_NAMES, **_MOE, **_SHARED_EXPERT},
    "qwen3moe": {**LLAMA_BLOCK_NAMES, **_QK_NORMS, **_MOE},
    "gemma": LLAMA_BLOCK_NAMES,
    # Gemma 2's sandwich norms: llama.cpp's ffn_norm is the *pre*-feed-forward norm there
    "gemma2": {
        **LLAMA_BLOCK_NAMES,
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    "phi3": {
        "attn_norm": "input_layernorm",
        "attn_qkv": "self_attn.qkv_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_up": "mlp.gate_up_proj",
        "ffn_down": "mlp.down_proj",
    },
}
"""llama.cpp block tensor -> the HF module under model.layers.<i> (joins _ARCH_BLOCK_NAMES)."""

_MAMBA_GLOBAL = {"token_embd": "backbone.embeddings", "output_norm": "backbone.norm_f",
                 "output": "lm_head"}
_MAMBA_BLOCK = {"attn_norm": "norm", "ssm_in": "mixer.in_proj", "ssm_conv1d": "mixer.conv1d",
                "ssm_x": "mixer.x_proj", "ssm_dt": "mixer.dt_proj", "ssm_out": "mixer.out_proj"}
_MAMBA_BARE = {"ssm_a": "mixer.A_log", "ssm_d": "mixer.D"}
"""Mamba's tensors stored without a .weight suffix ("blk.0.ssm_a")."""

SKIPPED_TENSORS = {"rope_factors_long.weight", "rope_factors_short.weight"}
"""Tensors read into the config (Phi-3's longrope factors), not weights."""


def mamba_hf_name(name: str) -> str | None:
    """"blk.3.ssm_in.weight" -> "backbone.layers.3.mixer.in_proj.weight"; None if unknown."""
    return table_hf_name(name, _MAMBA_GLOBAL, "backbone.layers", _MAMBA_BLOCK, _MAMBA_BARE)


def to_hf_layout(arch: str, hf_name: str, data: np.ndarray, shape: tuple[int, ...]
                 ) -> tuple[np.ndarray, tuple[int, ...]]:
    """Undo the converter's value changes that gguf.py's generic ones do not cover: Mamba's
    A = -exp(A_log) back to A_log (F32: 1-D-like tensors are never quantized) and its squeezed
    conv1d back to HF's [I, 1, K]; Qwen2-MoE's shared-expert gate, which llama.cpp also accepts
    as a vector [H], as HF's [1, H]."""
    if hf_name.endswith(".mlp.shared_expert_gate.weight") and len(shape) == 1:
        return data.reshape(1, -1), (1, shape[0])
    if arch != "mamba":
        return data, shape
    if hf_name.endswith(".mixer.A_log"):
        return np.log(-np.asarray(data, dtype=np.float32)), shape
    if hf_name.endswith(".mixer.conv1d.weight") and len(shape) == 2:
        return data, (shape[0], 1, shape[1])
    return data, shape


def hf_config(reader: GGUFFile, arch: str, common_config: Any, rope_parameters: Any) -> Any:
    """The transformers config of a file of one of ARCHITECTURES. common_config(reader, arch)
    and rope_parameters(meta) are gguf.py's readers of the fields every arch shares."""

    def meta(key: str, default: Any = None) -> Any:
        return reader.fields.get(f"{arch}.{key}", default)

    if arch == "mamba":
        return _mamba_config(reader, meta)
    common = common_config(reader, arch)
    tensor_names = {t.name for t in reader.tensors}
    if arch in ("qwen2", "qwen3", "qwen2moe", "qwen3moe"):
        return _qwen_config(arch, common, meta, tensor_names, _qwen_rope(meta, rope_parameters))
    if arch in ("gemma", "gemma2"):
        return _gemma_config(arch, common, meta)
    assert arch == "phi3", arch
    return _phi3_config(reader, common, meta, rope_parameters(meta))


def _qwen_config(arch: str, common: dict[str, Any], meta: Any, tensor_names: set[str],
                 rope: dict[str, Any]) -> Any:
    import transformers

    fields: dict[str, Any] = dict(common, rope_parameters=rope)
    if arch in ("qwen3", "qwen3moe"):
        fields["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    if arch in ("qwen2moe", "qwen3moe"):
        layers = common["num_hidden_layers"]
        fields.update(
            num_experts=meta("expert_count"),
            num_experts_per_tok=meta("expert_used_count"),
            moe_intermediate_size=meta("expert_feed_forward_length"),
            decoder_sparse_step=1,
            # llama.cpp makes every layer sparse; a file whose layer lacks a router is dense there
            mlp_only_layers=[i for i in range(layers)
                             if f"blk.{i}.ffn_gate_inp.weight" not in tensor_names],
            norm_topk_prob=bool(meta("expert_weights_norm", arch == "qwen3moe")),
        )  # fmt: skip
        if arch == "qwen2moe":
            fields["shared_expert_intermediate_size"] = meta(
                "expert_shared_feed_forward_length", 0)
    cls = {"qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "qwen2moe": "Qwen2MoeConfig",
           "qwen3moe": "Qwen3MoeConfig"}[arch]  # fmt: skip
    return getattr(transformers, cls)(**fields)


def _qwen_rope(meta: Any, rope_parameters: Any) -> dict[str, Any]:
    """YaRN as the converter writes Qwen's (type, factor, original context; the betas where the
    HF config had them), else gguf.py's default / linear."""
    if meta("rope.scaling.type") != "yarn":
        return rope_parameters(meta)
    params = {"rope_type": "yarn", "rope_theta": meta("rope.freq_base", 1e4),
              "factor": meta("rope.scaling.factor"),
              "original_max_position_embeddings": meta("rope.scaling.original_context_length")}
    for key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow"),
                        ("yarn_attn_factor", "attention_factor")):
        if (value := meta(f"rope.scaling.{key}")) is not None:
            params[hf_key] = value
    return params


_GEMMA2_27B_LAYERS = 46


def _gemma_config(arch: str, common: dict[str, Any], meta: Any) -> Any:
    from transformers import Gemma2Config, GemmaConfig

    rope = {"rope_type": "default", "rope_theta": meta("rope.freq_base", 1e4)}
    if arch == "gemma":
        return GemmaConfig(**common, rope_parameters=rope)
    query_scalar = common["head_dim"]
    if common["num_hidden_layers"] == _GEMMA2_27B_LAYERS:  # (llama.cpp's LLM_TYPE_27B rule)
        query_scalar = common["hidden_size"] // common["num_attention_heads"]
    return Gemma2Config(
        **common,
        rope_parameters=rope,
        query_pre_attn_scalar=query_scalar,
        attn_logit_softcapping=meta("attn_logit_softcapping"),
        final_logit_softcapping=meta("final_logit_softcapping"),
        sliding_window=meta("attention.sliding_window") or None,
    )


def _phi3_config(reader: GGUFFile, common: dict[str, Any], meta: Any, rope: dict[str, Any]
                 ) -> Any:
    from transformers import Phi3Config

    head_dim = common["head_dim"]
    partial = meta("rope.dimension_count", head_dim) / head_dim
    original = meta("rope.scaling.original_context_length") or common["max_position_embeddings"]
    factors = {t.name: t for t in reader.tensors if t.name in SKIPPED_TENSORS}
    if factors:
        long, short = (factors[f"rope_factors_{which}.weight"] for which in ("long", "short"))
        rope = {**rope, "rope_type": "longrope",
                "long_factor": [float(v) for v in np.asarray(long.data).reshape(-1)],
                "short_factor": [float(v) for v in np.asarray(short.data).reshape(-1)],
                "original_max_position_embeddings": original,
                "attention_factor": meta("rope.scaling.attn_factor")}  # fmt: skip
    return Phi3Config(
        **common,
        original_max_position_embeddings=original,
        partial_rotary_factor=partial,
        rope_parameters={**rope, "partial_rotary_factor": partial},
        sliding_window=meta("attention.sliding_window") or None,
    )


def _mamba_config(reader: GGUFFile, meta: Any) -> Any:
    from transformers import FalconMambaConfig, MambaConfig

    tensor_names = {t.name for t in reader.tensors}
    token_ids = {
        f"{name}_token_id": reader.fields.get(f"tokenizer.ggml.{key}_token_id")
        for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))
    }
    fields = dict(
        vocab_size=meta("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"]),
        hidden_size=meta("embedding_length"),
        num_hidden_layers=meta("block_count"),
        state_size=meta("ssm.state_size"),
        intermediate_size=meta("ssm.inner_size"),
        conv_kernel=meta("ssm.conv_kernel"),
        time_step_rank=meta("ssm.time_step_rank"),
        layer_norm_epsilon=meta("attention.layer_norm_rms_epsilon", 1e-5),
        use_conv_bias="blk.0.ssm_conv1d.bias" in tensor_names,
        use_bias="blk.0.ssm_in.bias" in tensor_names,
        tie_word_embeddings="output.weight" not in tensor_names,
        **token_ids,
    )
    if meta("ssm.dt_b_c_rms"):
        # (the dt/B/C norms' eps is not in the file: FalconMambaConfig's default, the released
        # model's 1e-6)
        return FalconMambaConfig(**fields, architectures=["FalconMambaForCausalLM"])
    return MambaConfig(**fields, architectures=["MambaForCausalLM"])
