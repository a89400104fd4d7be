"""An InternLM2 GGUF as llama.cpp's converter writes one (arch "internlm2": wqkv split into
Llama's attn_q/attn_k/attn_v, q/k rows permuted as for Llama, Llama's tensor names and
`internlm2.*` metadata) loads as a Llama and equals the HF Llama it was written from."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.model_executor.test_gguf import _llama_cpp_permute
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_BLOCK = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
          "post_attention_layernorm": "ffn_norm"}  # fmt: skip


def _gguf_name(hf_name: str) -> str:
    stem = hf_name.removesuffix(".weight")
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.weight"
    _, _, layer, module = stem.split(".", 3)  # model.layers.<i>.<module>
    return f"blk.{layer}.{_BLOCK[module]}.weight"


def _write_tokenizer(writer, model_dir: str) -> None:
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    vocab = dict(tok["model"]["vocab"])
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    vocab.update(special)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # control / normal
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m
                             for m in tok["model"]["merges"]])  # fmt: skip
    writer.add_bos_token_id(special["<|im_start|>"])
    writer.add_eos_token_id(special["<|im_end|>"])
    writer.add_pad_token_id(special["<|endoftext|>"])
    writer.add_add_bos_token(False)


def write_internlm2_gguf(llama_dir: str, path: str) -> str:
    from gguf import GGUFWriter

    with open(os.path.join(llama_dir, "config.json")) as f:
        config = json.load(f)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = GGUFWriter(path, "internlm2")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    _write_tokenizer(writer, llama_dir)
    for name, array in load_file(os.path.join(llama_dir, "model.safetensors")).items():
        if ".self_attn.q_proj." in name:
            array = _llama_cpp_permute(array, heads)
        elif ".self_attn.k_proj." in name:
            array = _llama_cpp_permute(array, kv_heads)
        writer.add_tensor(_gguf_name(name), np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def internlm2_gguf(tiny_model_factory, tmp_path_factory) -> tuple[str, str]:
    """(the GGUF file, the HF Llama dir it was written from)."""
    llama_dir = tiny_model_factory("LlamaConfig")
    path = str(tmp_path_factory.mktemp("internlm2_gguf") / "tiny-internlm2.F32.gguf")
    return write_internlm2_gguf(llama_dir, path), llama_dir


def test_engine_matches_hf(internlm2_gguf):
    path, reference_dir = internlm2_gguf
    assert_engine_matches_hf(path, reference_dir=reference_dir)


def test_logits_match_hf(internlm2_gguf):
    path, reference_dir = internlm2_gguf
    assert_logits_match_hf(path, reference_dir=reference_dir)
