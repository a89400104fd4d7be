"""InternLM2 (grouped wqkv rows, its own tensor names, a config transformers does not ship)
against HF transformers: transformers has no InternLM2, so the reference is a tiny random HF
Llama and the InternLM2 checkpoint is that Llama's weights rewritten in InternLM2's names and
wqkv layout (as InternLM's own conversion lays them out), so both must compute the same."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pagedllm.kernels import cpu_kernels_available
from pagedllm.worker.execution_strategy import FUSED_CPU_STACK
from tests.engine_internals import engine_core
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

VARIANTS = {
    "gqa": {},
    "bias_mha": {"attention_bias": True, "num_key_value_heads": 4},
    # InternLM2.5's dynamic NTK rope: the default frequencies up to max_position_embeddings
    "dynamic_rope": {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                         "rope_theta": 10000.0}},
}  # fmt: skip

_NAMES = {"model.embed_tokens.": "model.tok_embeddings.", "lm_head.": "output.",
          ".self_attn.o_proj.": ".attention.wo.", ".mlp.gate_proj.": ".feed_forward.w1.",
          ".mlp.up_proj.": ".feed_forward.w3.", ".mlp.down_proj.": ".feed_forward.w2.",
          ".input_layernorm.": ".attention_norm.",
          ".post_attention_layernorm.": ".ffn_norm."}  # fmt: skip


def _to_internlm2(llama_dir: str, out_dir: str) -> None:
    with open(os.path.join(llama_dir, "config.json")) as f:
        llama = json.load(f)
    heads, kv_heads = llama["num_attention_heads"], llama["num_key_value_heads"]
    head_dim = llama["hidden_size"] // heads
    tensors = load_file(os.path.join(llama_dir, "model.safetensors"))
    out = {}
    for name, tensor in tensors.items():
        if ".self_attn.q_proj." in name:
            k = tensors[name.replace("q_proj", "k_proj")]
            v = tensors[name.replace("q_proj", "v_proj")]
            rest = tensor.shape[1:]
            q = tensor.reshape(kv_heads, heads // kv_heads, head_dim, *rest)
            groups = [q, k.reshape(kv_heads, 1, head_dim, *rest),
                      v.reshape(kv_heads, 1, head_dim, *rest)]  # fmt: skip
            wqkv = torch.cat(groups, dim=1).reshape(-1, *rest)
            out[name.replace(".self_attn.q_proj.", ".attention.wqkv.")] = wqkv
            continue
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        for ours, theirs in _NAMES.items():
            name = name.replace(ours, theirs)
        out[name] = tensor.contiguous()
    save_file(out, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    keep = ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "vocab_size",
            "hidden_act", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
            "initializer_range"]  # fmt: skip
    config = {key: llama[key] for key in keep if key in llama}
    config.update(architectures=["InternLM2ForCausalLM"], model_type="internlm2",
                  auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config"},
                  bias=llama.get("attention_bias", False), rope_theta=10000.0,
                  rope_scaling=None, torch_dtype="float32")  # fmt: skip
    rope = llama.get("rope_parameters") or {}
    if rope.get("rope_type") == "dynamic":  # as InternLM2.5's config.json spells it
        config["rope_scaling"] = {"type": "dynamic", "factor": rope["factor"]}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)
    for file in os.listdir(llama_dir):
        if file.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(os.path.join(llama_dir, file), out_dir)


@pytest.fixture(scope="module")
def internlm2_dirs(tiny_model_factory, tmp_path_factory):
    """variant -> (InternLM2 dir, its reference HF Llama dir)."""
    dirs = {}
    for variant, overrides in VARIANTS.items():
        llama_dir = tiny_model_factory("LlamaConfig", **overrides)
        out_dir = str(tmp_path_factory.mktemp(f"internlm2_{variant}"))
        _to_internlm2(llama_dir, out_dir)
        dirs[variant] = (out_dir, llama_dir)
    return dirs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(internlm2_dirs, variant):
    model_dir, reference_dir = internlm2_dirs[variant]
    llm = assert_engine_matches_hf(model_dir, reference_dir=reference_dir)
    if cpu_kernels_available():  # Llama's block under other names: fused
        assert engine_core(llm).executor.driver_worker.execution.name == FUSED_CPU_STACK


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(internlm2_dirs, variant):
    model_dir, reference_dir = internlm2_dirs[variant]
    assert_logits_match_hf(model_dir, reference_dir=reference_dir)


def test_config_loads_without_remote_code(internlm2_dirs, monkeypatch):
    """The config and tokenizer load without transformers asking to trust remote code (which
    it does on stdin, blocking a server)."""
    import transformers.models.auto.configuration_auto as configuration_auto

    from pagedllm.model_executor.model_loader.config import unshipped_native_config
    from pagedllm.tokenizer.loader import _load

    def refuse(*args, **kwargs):
        raise AssertionError("asked to trust remote code")

    monkeypatch.setattr(configuration_auto, "resolve_trust_remote_code", refuse)
    model_dir, _ = internlm2_dirs["gqa"]
    assert unshipped_native_config(model_dir).architectures == ["InternLM2ForCausalLM"]
    _load.cache_clear()
    assert _load("hf", model_dir, None).vocab_size > 0


def test_dynamic_rope_past_the_original_length_is_refused():
    """(The engine already caps max_model_len at max_position_embeddings; the rotary layer
    refuses on its own too, so no other caller gets silently wrong frequencies.)"""
    from pagedllm.model_executor.layers.rotary import RotaryEmbedding

    params = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0,
              "original_max_position_embeddings": 512}  # fmt: skip
    RotaryEmbedding(16, 512, params)  # up to the original: the default frequencies
    with pytest.raises(ValueError, match="rope_type 'dynamic'.*max_model_len <= 512"):
        RotaryEmbedding(16, 1024, params)
