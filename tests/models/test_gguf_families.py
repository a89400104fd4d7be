"""GGUF files of the families whose llama.cpp layout we read, written here as llama.cpp's
converter writes them from a tiny random HF model (F32 tensors, the tiny tokenizer as GGUF
byte-level BPE), must equal that HF model through the whole engine:

- "internlm2": InternLM2's wqkv split into Llama's attn_q/attn_k/attn_v with q/k rows permuted
  as for Llama (llama.cpp runs it with its "normal" pairwise rope), Llama's tensor names and
  `internlm2.*` metadata: it loads as a Llama, so the reference is an HF Llama;
- "olmo2": OLMo 2's post-norm block (post_attention_norm, post_ffw_norm, whole-projection
  attn_q_norm / attn_k_norm), q/k rows as HF's (llama.cpp's NEOX rope);
- "command-r": Cohere's parallel block (attn_norm only, bias-free LayerNorms), per-head
  attn_q_norm / attn_k_norm, tied output, logit_scale; q/k rows as HF's (both pair adjacent
  dims: llama.cpp's "normal" rope);
- "stablelm": LayerNorms with bias, q/k/v bias, partial rotary (rope.dimension_count), parallel
  residual flag, per-head q/k norms stacked [heads, head_dim]; q/k rows as HF's (NEOX rope);
- "phi2": transformers' Phi format (q/k/v separate, final_layernorm as output_norm, fc1/fc2 as
  ffn_up/ffn_down, every bias), partial rotary; q/k rows as HF's (NEOX rope);
- "glm4": GLM-4's sandwich norms (post_attention_norm on the attention output, ffn_norm before
  the MLP, post_ffw_norm), the stored gate_up_proj as ffn_up, q/k/v bias, partial rotary; q/k
  rows as HF's (both pair adjacent dims: llama.cpp's "normal" rope)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.model_executor.test_gguf import _llama_cpp_permute
from tests.models.gguf_fixtures import (
    hf_comparison_tests,
    write_gguf_files,
    write_tensors,
    write_tokenizer,
)
from tests.models.test_cohere import BASE as COHERE
from tests.models.test_phi import VARIANTS as PHI
from tests.models.test_stablelm import VARIANTS as STABLELM

_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
           "model.final_layernorm": "output_norm"}  # (the last: Phi's)
_LLAMA_BLOCK = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}  # fmt: skip
_OLMO2_BLOCK = {**{k: v for k, v in _LLAMA_BLOCK.items() if k != "input_layernorm"},
                "post_attention_layernorm": "post_attention_norm",
                "post_feedforward_layernorm": "post_ffw_norm",
                "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}  # fmt: skip
_COMMAND_R_BLOCK = {**{k: v for k, v in _LLAMA_BLOCK.items() if k != "post_attention_layernorm"},
                    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
_STABLELM_BLOCK = {**_LLAMA_BLOCK, "self_attn.q_layernorm": "attn_q_norm",
                   "self_attn.k_layernorm": "attn_k_norm"}
_PHI2_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.dense": "attn_output", "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down"}
_GLM4_BLOCK = {**{k: v for k, v in _LLAMA_BLOCK.items()
                  if k not in ("mlp.gate_proj", "mlp.up_proj")},
               "mlp.gate_up_proj": "ffn_up", "post_self_attn_layernorm": "post_attention_norm",
               "post_attention_layernorm": "ffn_norm",
               "post_mlp_layernorm": "post_ffw_norm"}  # fmt: skip
FAMILIES = {
    # case: (GGUF arch, HF config class and overrides of the source model, llama.cpp block
    # names, q/k permuted)
    "internlm2": ("internlm2", "LlamaConfig", {}, _LLAMA_BLOCK, True),
    "olmo2": ("olmo2", "Olmo2Config", {}, _OLMO2_BLOCK, False),
    "command-r": ("command-r", "CohereConfig", {**COHERE, "use_qk_norm": True},
                  _COMMAND_R_BLOCK, False),
    "stablelm": ("stablelm", "StableLmConfig", STABLELM["sequential_bias"], _STABLELM_BLOCK,
                 False),
    "stablelm_parallel_qk_norm": ("stablelm", "StableLmConfig", STABLELM["parallel_qk_norm"],
                                  _STABLELM_BLOCK, False),
    "phi2": ("phi2", "PhiConfig", PHI["phi2"], _PHI2_BLOCK, False),
    "glm4": ("glm4", "Glm4Config", {}, _GLM4_BLOCK, False),
}  # fmt: skip


def _gguf_name(hf_name: str, block_names: dict[str, str]) -> str:
    stem, _, suffix = hf_name.rpartition(".")  # weight / bias
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{suffix}"
    _, _, layer, module = stem.split(".", 3)  # model.layers.<i>.<module>
    return f"blk.{layer}.{block_names[module]}.{suffix}"


def _stack_per_head_norms(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """StableLM's `...q_layernorm.norms.<h>.weight` stacked into one [heads, head_dim]
    `...q_layernorm.weight`, as llama.cpp's converter stacks them."""
    out, stacks = {}, {}
    for name, array in tensors.items():
        if ".norms." in name:
            stem, _, rest = name.partition(".norms.")
            stacks.setdefault(f"{stem}.weight", {})[int(rest.split(".")[0])] = array
        else:
            out[name] = array
    for name, heads in stacks.items():
        out[name] = np.stack([heads[h] for h in range(len(heads))])
    return out


def write_gguf(hf_dir: str, path: str, case: str, q8_0: bool = False) -> str:
    """The GGUF llama.cpp's converter would write for the HF model in hf_dir (FAMILIES[case]);
    q8_0: its 2-D weights in Q8_0 blocks (as `--outtype q8_0` writes them), the rest F32."""
    from gguf import GGUFWriter

    arch, _, _, block_names, permuted = FAMILIES[case]
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    writer = GGUFWriter(path, arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(config.get("rope_theta") or rope["rope_theta"])
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if config.get("head_dim"):  # (GLM-4's is not hidden_size / heads)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    partial = config.get("partial_rotary_factor") or rope.get("partial_rotary_factor")
    if partial is not None:
        writer.add_rope_dimension_count(int(partial * head_dim))
    if "use_parallel_residual" in config:
        writer.add_parallel_residual(config["use_parallel_residual"])
    if config.get("rms_norm_eps") is not None:
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if config.get("layer_norm_eps") is not None:
        writer.add_layer_norm_eps(config["layer_norm_eps"])
    if config.get("logit_scale") is not None:
        writer.add_logit_scale(config["logit_scale"])
    writer.add_vocab_size(config["vocab_size"])
    write_tokenizer(writer, hf_dir)
    tensors = _stack_per_head_norms(load_file(os.path.join(hf_dir, "model.safetensors")))
    for name in tensors:
        if permuted and ".self_attn.q_proj." in name:
            tensors[name] = _llama_cpp_permute(tensors[name], heads)
        elif permuted and ".self_attn.k_proj." in name:
            tensors[name] = _llama_cpp_permute(tensors[name], kv_heads)
    write_tensors(writer, None, tensors, rename=lambda name: _gguf_name(name, block_names),
                  q8_0=lambda gguf_name, array: (
                      q8_0 and array.ndim == 2 and array.shape[1] % 32 == 0))
    return path


@pytest.fixture(scope="module")
def gguf_files(tiny_model_factory, tmp_path_factory) -> dict[str, tuple[str, str]]:
    return write_gguf_files(tiny_model_factory, tmp_path_factory,
                            {case: family[1:3] for case, family in FAMILIES.items()}, write_gguf,
                            lambda case: f"tiny-{case}.F32.gguf")  # fmt: skip


test_engine_matches_hf, test_logits_match_hf = hf_comparison_tests(list(FAMILIES))
