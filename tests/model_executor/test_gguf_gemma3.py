"""GGUF arch "gemma3": tensor names and the config transformers derives from the file (the
weights, Gemma's (1 + w) norms included, are checked end to end in tests/models)."""

from __future__ import annotations

import os

import pytest

from pagedllm.model_executor.model_loader.gguf import gguf_to_hf_name


def test_gemma3_tensor_names():
    layer = "model.layers.3"
    expected = {
        "blk.3.attn_norm.weight": f"{layer}.input_layernorm.weight",
        "blk.3.post_attention_norm.weight": f"{layer}.post_attention_layernorm.weight",
        "blk.3.ffn_norm.weight": f"{layer}.pre_feedforward_layernorm.weight",
        "blk.3.post_ffw_norm.weight": f"{layer}.post_feedforward_layernorm.weight",
        "blk.3.attn_q_norm.weight": f"{layer}.self_attn.q_norm.weight",
        "blk.3.attn_k_norm.weight": f"{layer}.self_attn.k_norm.weight",
        "blk.3.attn_q.weight": f"{layer}.self_attn.q_proj.weight",
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
    }
    for gguf_name, hf_name in expected.items():
        assert gguf_to_hf_name(gguf_name, "gemma3") == hf_name
    # the llama mapping is unchanged: there ffn_norm is the post-attention norm
    assert gguf_to_hf_name("blk.3.ffn_norm.weight") == f"{layer}.post_attention_layernorm.weight"


@pytest.mark.gguf
@pytest.mark.slow
def test_gemma3_270m_config_and_norms_match_transformers(gemma3_270m_gguf_path):
    from pagedllm.model_executor.model_loader.config import load_model_config
    from tests.hf_reference import load_hf_model

    ours = load_model_config("gemma-3-270m")
    assert ours.path == gemma3_270m_gguf_path
    # transformers' config of the file, as its model reads it (the model is cached for the
    # session's reference tests; reading the config alone parses the whole file again)
    ref = load_hf_model(os.path.dirname(gemma3_270m_gguf_path),
                        os.path.basename(gemma3_270m_gguf_path)).config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                "pad_token_id", "rope_parameters", "sliding_window", "layer_types",
                "query_pre_attn_scalar", "final_logit_softcapping",
                "hidden_activation"):  # fmt: skip
        assert getattr(ours.hf_config, key) == getattr(ref, key), key
    assert ours.architecture == "Gemma3ForCausalLM"
