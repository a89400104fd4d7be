"""A llama.cpp `deepseek2` GGUF, written from a tiny random HF DeepSeek model as llama.cpp's
converter writes it (the gguf package's own HF -> GGUF tensor names; the routed experts stacked per
projection; kv_b_proj split into attn_k_b, transposed per head, and attn_v_b; the router bias as
exp_probs_b.bias; MLA's metadata with key_length = the cached latent's size and the per-head sizes
in key_length_mla / value_length_mla; head_count_kv 1), must equal that HF model through the whole
engine: V2-Lite's layout (softmax routing, no q_lora_rank) and V3's (sigmoid, groups)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.models.gguf_fixtures import (
    converter_tensors,
    hf_comparison_tests,
    write_gguf_files,
    write_tensors,
    write_tokenizer,
)
from tests.models.test_deepseek import VARIANTS

CASES = ["v2_lite", "v3"]


def _write_metadata(writer, c: dict) -> None:
    from gguf import ExpertGatingFuncType

    writer.add_block_count(c["num_hidden_layers"])
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(c["num_attention_heads"])
    writer.add_head_count_kv(1)  # (MLA as MQA over the latent)
    writer.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    writer.add_vocab_size(c["vocab_size"])
    writer.add_leading_dense_block_count(c["first_k_dense_replace"])
    if c.get("q_lora_rank") is not None:
        writer.add_q_lora_rank(c["q_lora_rank"])
    writer.add_kv_lora_rank(c["kv_lora_rank"])
    writer.add_key_length(c["kv_lora_rank"] + c["qk_rope_head_dim"])
    writer.add_value_length(c["kv_lora_rank"])
    writer.add_key_length_mla(c["qk_nope_head_dim"] + c["qk_rope_head_dim"])
    writer.add_value_length_mla(c["v_head_dim"])
    writer.add_rope_dimension_count(c["qk_rope_head_dim"])
    writer.add_expert_feed_forward_length(c["moe_intermediate_size"])
    writer.add_expert_count(c["n_routed_experts"])
    writer.add_expert_shared_count(c["n_shared_experts"])
    writer.add_expert_used_count(c["num_experts_per_tok"])
    writer.add_expert_weights_scale(c["routed_scaling_factor"])
    writer.add_expert_weights_norm(bool(c["norm_topk_prob"]))
    v3 = c["model_type"] == "deepseek_v3"
    writer.add_expert_gating_func(ExpertGatingFuncType.SIGMOID if v3
                                  else ExpertGatingFuncType.SOFTMAX)  # fmt: skip
    if v3:
        writer.add_expert_group_count(c["n_group"])
        writer.add_expert_group_used_count(c["topk_group"])


def _converter_tensors(c: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF names -> the tensors llama.cpp's converter emits, under HF-like names (mapped next)."""
    heads, nope, v_head = c["num_attention_heads"], c["qk_nope_head_dim"], c["v_head_dim"]

    def split_kv_b(name: str, array: np.ndarray) -> dict[str, np.ndarray] | None:
        if not name.endswith("kv_b_proj.weight"):
            return None
        kv_b = array.reshape(heads, nope + v_head, -1)
        return {name.replace("kv_b_proj", "k_b_proj"): kv_b[:, :nope].transpose(0, 2, 1),
                name.replace("kv_b_proj", "v_b_proj"): kv_b[:, nope:]}

    return converter_tensors(tensors, split_kv_b)


def write_deepseek_gguf(hf_dir: str, path: str) -> str:
    from gguf import GGUFWriter
    from gguf.constants import MODEL_ARCH
    from gguf.tensor_mapping import TensorNameMap

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    names = TensorNameMap(MODEL_ARCH.DEEPSEEK2, c["num_hidden_layers"])
    writer = GGUFWriter(path, "deepseek2")
    _write_metadata(writer, c)
    write_tokenizer(writer, hf_dir)
    tensors = _converter_tensors(c, load_file(os.path.join(hf_dir, "model.safetensors")))
    write_tensors(writer, names, tensors)
    return path


@pytest.fixture(scope="module")
def gguf_files(tiny_model_factory, tmp_path_factory) -> dict[str, tuple[str, str]]:
    return write_gguf_files(tiny_model_factory, tmp_path_factory,
                            {case: VARIANTS[case] for case in CASES},
                            lambda hf_dir, path, case: write_deepseek_gguf(hf_dir, path),
                            lambda case: f"tiny-deepseek-{case}.F32.gguf")


test_engine_matches_hf, test_logits_match_hf = hf_comparison_tests(CASES)
