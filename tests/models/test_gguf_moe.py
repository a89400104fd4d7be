"""llama.cpp `dbrx` and `glm4moe` GGUFs, written from tiny random HF models as llama.cpp's
converter (convert_hf_to_gguf.py) writes them: the gguf package's own HF -> GGUF tensor names and
metadata keys; DBRX's fused expert matrices viewed [E, I, H] (w2 transposed per expert to
[E, H, I]) and its Wqkv kept fused; GLM-4-MoE's experts stacked per projection, its router bias as
exp_probs_b.bias, and one MTP (nextn) layer appended past the decoder layers (block_count counts
it), which must be skipped. Each must equal its HF model through the whole engine (greedy tokens of
a chunked batch, again from the prefix cache) and in prefill logits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.models.gguf_fixtures import (
    assert_q8_0_equals_dequantized,
    converter_tensors,
    hf_comparison_tests,
    write_gguf_files,
    write_tensors,
    write_tokenizer,
)
from tests.models.test_dbrx_glm4_moe import DBRX, GLM4_MOE

# llama.cpp's DBRX graph normalizes the top-k weights by their sum (p = 1, DBRX's own value);
# DBRX's rope base is 5e5 (not the 1e4 default; transformers 5 reads it from rope_parameters,
# the converter from attn_config); the converter writes no expert groups for GLM-4-MoE
# (GLM-4.5's n_group is 1)
CASES = {
    "dbrx": ("DbrxConfig", {
        **DBRX, "attn_config": {**DBRX["attn_config"], "rope_theta": 5e5},
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e5},
        "ffn_config": {**DBRX["ffn_config"], "moe_normalize_expert_weights": 1.0}}),
    "glm4moe": ("Glm4MoeConfig", {**GLM4_MOE, "n_group": 1, "topk_group": 1}),
}


def _dbrx(writer, c: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ffn, attn = c["ffn_config"], c["attn_config"]
    writer.add_block_count(c["n_layers"])
    writer.add_context_length(c["max_seq_len"])
    writer.add_embedding_length(c["d_model"])
    writer.add_feed_forward_length(ffn["ffn_hidden_size"])
    writer.add_head_count(c["n_heads"])
    writer.add_head_count_kv(attn["kv_n_heads"])
    writer.add_rope_freq_base(attn["rope_theta"])
    writer.add_clamp_kqv(attn["clip_qkv"])
    writer.add_expert_count(ffn["moe_num_experts"])
    writer.add_expert_used_count(ffn["moe_top_k"])
    writer.add_layer_norm_eps(1e-5)
    out = {}
    for name, array in tensors.items():
        which = name.rpartition(".")[2]
        if ".ffn.experts.mlp." in name:  # no .weight suffix in DBRX's checkpoint
            array = array.reshape(ffn["moe_num_experts"], ffn["ffn_hidden_size"], c["d_model"])
            if which == "w2":
                array = array.transpose(0, 2, 1)
            name = f"{name}.weight"
        out[name] = array
    return out


def _glm4moe(writer, c: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from gguf import ExpertGatingFuncType

    layers = c["num_hidden_layers"]
    writer.add_block_count(layers + 1)  # + the MTP layer
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(c["num_attention_heads"])
    writer.add_head_count_kv(c["num_key_value_heads"])
    writer.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    writer.add_key_length(c["head_dim"])
    writer.add_value_length(c["head_dim"])
    partial = c.get("partial_rotary_factor") or c["rope_parameters"]["partial_rotary_factor"]
    writer.add_rope_dimension_count(int(c["head_dim"] * partial))
    writer.add_expert_count(c["n_routed_experts"])
    writer.add_expert_used_count(c["num_experts_per_tok"])
    writer.add_expert_feed_forward_length(c["moe_intermediate_size"])
    writer.add_expert_shared_count(c["n_shared_experts"])
    writer.add_leading_dense_block_count(c["first_k_dense_replace"])
    writer.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    writer.add_expert_weights_scale(c["routed_scaling_factor"])
    writer.add_expert_weights_norm(c["norm_topk_prob"])
    writer.add_nextn_predict_layers(1)
    out = converter_tensors(tensors)
    # the MTP layer: a decoder layer (garbage here: must not be read) plus its nextn tensors
    last = f"model.layers.{layers - 1}."
    for name in [n for n in out if n.startswith(last)]:
        out[name.replace(last, f"model.layers.{layers}.")] = out[name] * 100
    hidden = c["hidden_size"]
    out[f"model.layers.{layers}.eh_proj.weight"] = np.ones((hidden, 2 * hidden), np.float32)
    out[f"model.layers.{layers}.enorm.weight"] = np.ones(hidden, np.float32)
    return out


def write_moe_gguf(hf_dir: str, path: str, arch: str, q8_0: bool = False) -> str:
    """q8_0: every weight of 2+ dims in Q8_0 blocks, stacked experts included, except the routers
    (as the converter's `--outtype q8_0` writes them: it keeps ffn_gate_inp F32)."""
    from gguf import GGUFWriter
    from gguf.constants import MODEL_ARCH
    from gguf.tensor_mapping import TensorNameMap

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    model_arch = {"dbrx": MODEL_ARCH.DBRX, "glm4moe": MODEL_ARCH.GLM4_MOE}[arch]
    blocks = c.get("n_layers") or c["num_hidden_layers"] + 1
    names = TensorNameMap(model_arch, blocks)
    writer = GGUFWriter(path, arch)
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    tensors = (_dbrx if arch == "dbrx" else _glm4moe)(writer, c, tensors)
    writer.add_vocab_size(c["vocab_size"])
    write_tokenizer(writer, hf_dir)
    write_tensors(writer, names, tensors, lambda gguf_name, array: (
        q8_0 and array.ndim >= 2 and array.shape[-1] % 32 == 0 and "gate_inp" not in gguf_name))
    return path


@pytest.fixture(scope="module")
def gguf_files(tiny_model_factory, tmp_path_factory) -> dict[str, tuple[str, str]]:
    return write_gguf_files(tiny_model_factory, tmp_path_factory, CASES, write_moe_gguf,
                            lambda arch: f"tiny-{arch}.F32.gguf")


test_engine_matches_hf, test_logits_match_hf = hf_comparison_tests(list(CASES))


@pytest.mark.parametrize("arch", list(CASES))
def test_q8_0_quantized_equals_dequantized(tiny_model_factory, tmp_path, arch):
    """A Q8_0 file run with its linears kept in their blocks (--quantization gguf; DBRX's fused
    attn_qkv among them) equals the same file dequantized at load."""
    config_cls, overrides = CASES[arch]
    assert_q8_0_equals_dequantized(write_moe_gguf(
        tiny_model_factory(config_cls, **overrides), str(tmp_path / f"tiny-{arch}.Q8_0.gguf"),
        arch, q8_0=True))
