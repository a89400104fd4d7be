"""GGUF loading: the embedded SmolLM2 Q4_1 against transformers reading the same file."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from pagedllm.model_executor.model_loader.gguf import _unpermute_rows, gguf_to_hf_name
from tests.hf_reference import hf_logits, load_hf_model
from tests.model_executor.paged import PagedRunner


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half -> interleaved rows)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@pytest.mark.parametrize("n_head", [1, 3, 9])
def test_unpermute_inverts_llama_cpp_permute(n_head):
    w = np.random.default_rng(0).standard_normal((n_head * 8, 5)).astype(np.float32)
    np.testing.assert_array_equal(_unpermute_rows(_llama_cpp_permute(w, n_head), n_head), w)


def test_tensor_names():
    assert gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_to_hf_name("output.weight") == "lm_head.weight"
    assert gguf_to_hf_name("output_norm.weight") == "model.norm.weight"
    assert gguf_to_hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert gguf_to_hf_name("blk.0.ffn_norm.weight") == (
        "model.layers.0.post_attention_layernorm.weight"
    )
    assert gguf_to_hf_name("rope_freqs.weight") is None


@pytest.mark.gguf
def test_smollm2_config_matches_transformers(smollm2_gguf_path):
    from transformers import AutoConfig

    from pagedllm.model_executor.model_loader.config import load_model_config

    ours = load_model_config(smollm2_gguf_path)
    ref = AutoConfig.from_pretrained(
        os.path.dirname(smollm2_gguf_path), gguf_file=os.path.basename(smollm2_gguf_path)
    )
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                "rope_parameters", "attention_bias", "mlp_bias"):  # fmt: skip
        assert getattr(ours.hf_config, key) == getattr(ref, key), key
    assert (ours.format, ours.architecture, ours.dtype) == ("gguf", "LlamaForCausalLM", "float32")
    assert ours.eos_token_ids == (2,)
    assert ours.max_model_len == 8192


@pytest.mark.gguf
def test_smollm2_logits_match_transformers(smollm2_gguf_path):
    from pagedllm.model_executor.model_loader import get_model
    from pagedllm.model_executor.model_loader.config import load_model_config
    from pagedllm.tokenizer.loader import load_tokenizer

    config = load_model_config(None, max_model_len=256, quantization="none")  # as transformers
    start = time.perf_counter()
    model = get_model(config, "cpu")
    print(f"GGUF load: {time.perf_counter() - start:.2f} s")
    tokenizer = load_tokenizer(config)
    prompt = tokenizer.encode("The capital of France is Paris. The capital of Germany is")
    (ours,) = PagedRunner(model, num_reqs=1, block_size=16, blocks_per_req=8).step({0: prompt})
    hf = load_hf_model(os.path.dirname(smollm2_gguf_path), os.path.basename(smollm2_gguf_path))
    ref = hf_logits(hf, prompt)
    torch.testing.assert_close(ours[-1], ref[-1], atol=2e-3, rtol=1e-3)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.gguf
def test_weight_estimate_counts_native_blocks(smollm2_gguf_path):
    """The start-up fit check sizes quantized linears at their block size, not as float."""
    from pagedllm.model_executor.model_loader import estimate_weight_bytes
    from pagedllm.model_executor.model_loader.config import load_model_config
    from pagedllm.model_executor.model_loader.gguf import open_gguf

    native = load_model_config(smollm2_gguf_path)
    floats = load_model_config(smollm2_gguf_path, quantization="none")
    assert native.quantization == "gguf" and floats.quantization is None
    tensors = open_gguf(smollm2_gguf_path).tensors
    assert estimate_weight_bytes(floats) == 4 * sum(int(t.n_elements) for t in tensors)
    embedding = next(t for t in tensors if t.name == "token_embd.weight")
    assert embedding.tensor_type.name == "Q8_0"  # kept in its blocks too (VocabParallelEmbedding)
    linears = sum(int(t.n_bytes) for t in tensors if t.tensor_type.name == "Q4_1")
    norms = sum(4 * int(t.n_elements) for t in tensors if t.tensor_type.name == "F32")
    assert estimate_weight_bytes(native) == int(embedding.n_bytes) + linears + norms


@pytest.mark.gguf
def test_lean_reader_matches_gguf_reader(smollm2_gguf_path):
    """GGUFFile against the gguf package's own reader: every metadata value, every tensor's
    type, shape, offset and bytes."""
    from gguf import GGUFReader

    from pagedllm.model_executor.model_loader.gguf_file import GGUFFile

    ours, ref = GGUFFile(smollm2_gguf_path), GGUFReader(smollm2_gguf_path)
    ref_fields = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.fields.keys() == ref_fields.keys()
    for key, value in ref_fields.items():
        if isinstance(value, float):
            assert ours.fields[key] == pytest.approx(value, rel=1e-7), key
        else:
            assert ours.fields[key] == value, key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert (a.tensor_type, a.shape, a.n_bytes, a.data_offset) == (
            b.tensor_type,
            tuple(int(d) for d in b.shape),
            int(b.n_bytes),
            int(b.data_offset),
        ), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        assert np.array_equal(a.data, b.data), a.name


@pytest.mark.gguf
def test_vocab_table_keeps_its_gguf_codes(smollm2_gguf_path):
    """The Q8_0 embedding (also the tied LM head) is loaded straight into the kernel's codes:
    every row equals the file's dequantized row exactly, and no float table is left."""
    from pagedllm.model_executor.layers.embedding import VocabParallelEmbedding
    from pagedllm.model_executor.model_loader.gguf import iterate_gguf_weights

    table = next(w for name, w in iterate_gguf_weights(smollm2_gguf_path, dequantize=False)
                 if name == "model.embed_tokens.weight")  # fmt: skip
    embedding = VocabParallelEmbedding(*table.shape)
    embedding.weight.weight_loader(embedding.weight, table)
    embedding.quantize_()
    assert embedding.qweight_kernel is not None and "weight" not in embedding._parameters
    ids = torch.tensor([0, 1, 2, 500, 12345, table.shape[0] - 1])
    torch.testing.assert_close(embedding(ids), table.dequantize()[ids], rtol=0, atol=0)
