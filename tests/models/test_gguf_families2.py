"""llama.cpp `granite`, `granitemoe`, `falcon`, `bloom`, `starcoder` and `gptj` GGUFs, written
from tiny random HF models as llama.cpp's converter writes them (convert_hf_to_gguf.py; GPT-J:
gguf-py's convert-gptj-hf-to-gguf.py): the gguf package's own HF -> GGUF tensor names and the
metadata keys each converter writes, with its layouts:

- granite / granitemoe: q/k rows permuted as Llama's; the multipliers as attention.scale,
  embedding_scale, residual_scale, logit_scale; GraniteMoE's input_linear split into
  ffn_gate_exps / ffn_up_exps;
- falcon: query_key_value regrouped to q | k | v, head_count_kv 1 for the old layout (Falcon-7B's
  config.json has no num_kv_heads), context_length 2048 and feed_forward_length 4 * hidden
  whatever the model; Falcon-40B's ln_attn / ln_mlp as attn_norm_2 / attn_norm;
- bloom: per-head query_key_value regrouped to q | k | v, the embedding LayerNorm as
  token_embd_norm, context_length = hidden (no seq_length in the config);
- starcoder: tensors as they are, head_count_kv 1, learned positions as position_embd;
- gptj: tensors as they are (q/k rows as HF's), rope.dimension_count = rotary_dim.

Each must equal its HF model through the whole engine (greedy tokens of a chunked mixed batch,
again from the prefix cache) and in prefill logits (F32 files); Q8_0 files run with their
linears kept in blocks (--quantization gguf) equal the same files dequantized at load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from pagedllm import LLM, SamplingParams
from tests.engine_internals import loaded_model
from tests.model_executor.test_gguf import _llama_cpp_permute
from tests.models.family_check import random_prompts
from tests.models.gguf_fixtures import (
    hf_comparison_tests,
    write_gguf_files,
    write_tensors,
    write_tokenizer,
)
from tests.models.test_bloom import VARIANTS as BLOOM
from tests.models.test_falcon import VARIANTS as FALCON
from tests.models.test_gpt_bigcode import VARIANTS as GPT_BIGCODE
from tests.models.test_gptj import VARIANTS as GPTJ
from tests.models.test_granite import GRANITE
from tests.models.test_granitemoe import VARIANTS as GRANITE_MOE

CASES = {
    # case: (GGUF arch, HF config class, overrides of the source model)
    "granite": ("granite", "GraniteConfig", GRANITE),
    "granitemoe": ("granitemoe", "GraniteMoeConfig", GRANITE_MOE["top2_of_4"]),
    "falcon_40b": ("falcon", "FalconConfig", FALCON["new_gqa_two_norms"]),
    # Falcon 2's one-norm new layout (with a q|k|v bias the converter would regroup likewise)
    "falcon2_bias": ("falcon", "FalconConfig", {**FALCON["new_gqa_two_norms"],
                                                "num_ln_in_parallel_attn": 1, "bias": True}),
    "falcon_7b": ("falcon", "FalconConfig", FALCON["old_multi_query_parallel"]),
    "bloom": ("bloom", "BloomConfig", BLOOM["bloom"]),
    "starcoder": ("starcoder", "GPTBigCodeConfig", GPT_BIGCODE["multi_query"]),
    "gptj": ("gptj", "GPTJConfig", GPTJ["rotary_dim_8"]),
}  # fmt: skip
Q8_0_CASES = ["granite", "falcon_40b", "bloom", "starcoder", "gptj"]


def _granite(writer, c: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """convert_hf_to_gguf.py's GraniteModel / GraniteMoeModel (LlamaModel's metadata)."""
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    writer.add_rope_dimension_count(c["hidden_size"] // heads)
    writer.add_attention_scale(c["attention_multiplier"])
    writer.add_embedding_scale(c["embedding_multiplier"])
    writer.add_residual_scale(c["residual_multiplier"])
    writer.add_logit_scale(c["logits_scaling"])
    if c.get("num_local_experts"):
        writer.add_expert_count(c["num_local_experts"])
        writer.add_expert_used_count(c["num_experts_per_tok"])
    out = {}
    for name, array in tensors.items():
        if ".self_attn.q_proj." in name:
            array = _llama_cpp_permute(array, heads)
        elif ".self_attn.k_proj." in name:
            array = _llama_cpp_permute(array, kv_heads)
        if name.endswith("block_sparse_moe.input_linear.weight"):  # [E, 2I, H] gate | up
            gate, up = np.split(array, 2, axis=1)
            out[name.replace("input_linear", "input_linear_gate")] = gate
            out[name.replace("input_linear", "input_linear_up")] = up
            continue
        out[name] = array
    return out


def _falcon(writer, c: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    heads, hidden = c["num_attention_heads"], c["hidden_size"]
    kv_heads = c["num_kv_heads"] if c["new_decoder_architecture"] else 1
    writer.add_context_length(2048)
    writer.add_tensor_data_layout("jploski")
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(4 * hidden)
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_eps(c["layer_norm_epsilon"])
    out = {}
    for name, array in tensors.items():
        if "query_key_value" in name:  # [kv, G + 2, D, ...] -> q | k | v
            grouped = array.reshape(kv_heads, heads // kv_heads + 2, hidden // heads,
                                    *array.shape[1:])  # fmt: skip
            array = np.concatenate([grouped[:, :-2].reshape(-1, *array.shape[1:]),
                                    grouped[:, -2].reshape(-1, *array.shape[1:]),
                                    grouped[:, -1].reshape(-1, *array.shape[1:])])  # fmt: skip
        out[name] = array
    return out


def _bloom(writer, c: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    heads, hidden = c["n_head"], c["hidden_size"]
    writer.add_context_length(c.get("seq_length", hidden))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(4 * hidden)
    writer.add_block_count(c["n_layer"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_eps(c["layer_norm_epsilon"])
    out = {}
    for name, array in tensors.items():
        name = name.removeprefix("transformer.")
        if "query_key_value" in name:  # [heads, 3, D, ...] -> q | k | v
            per_head = array.reshape(heads, 3, hidden // heads, *array.shape[1:])
            array = per_head.swapaxes(0, 1).reshape(array.shape)
        out[name] = array
    return out


def _starcoder(writer, c: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    writer.add_context_length(c["n_positions"])
    writer.add_embedding_length(c["n_embd"])
    writer.add_feed_forward_length(4 * c["n_embd"])
    writer.add_block_count(c["n_layer"])
    writer.add_head_count(c["n_head"])
    writer.add_head_count_kv(1)
    writer.add_layer_norm_eps(c["layer_norm_epsilon"])
    return tensors


def _gptj(writer, c: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    writer.add_context_length(c["n_positions"])
    writer.add_embedding_length(c["n_embd"])
    writer.add_block_count(c["n_layer"])
    writer.add_feed_forward_length(4 * c["n_embd"])
    writer.add_head_count(c["n_head"])
    writer.add_rope_dimension_count(c["rotary_dim"])
    writer.add_layer_norm_eps(c["layer_norm_epsilon"])
    return {n: a for n, a in tensors.items() if not n.endswith((".attn.bias", ".masked_bias"))}


_CONVERTERS = {"granite": _granite, "granitemoe": _granite, "falcon": _falcon, "bloom": _bloom,
               "starcoder": _starcoder, "gptj": _gptj}  # fmt: skip
_F32 = ("gate_inp", "position_embd")
"""Kept F32 by the converter's --outtype q8_0 (with every 1-D tensor)."""


def write_gguf(hf_dir: str, path: str, arch: str, q8_0: bool = False) -> str:
    from gguf import GGUFWriter
    from gguf.constants import MODEL_ARCH_NAMES
    from gguf.tensor_mapping import TensorNameMap

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    model_arch = next(a for a, n in MODEL_ARCH_NAMES.items() if n == arch)
    names = TensorNameMap(model_arch, c.get("num_hidden_layers") or c["n_layer"])
    writer = GGUFWriter(path, arch)
    tensors = _CONVERTERS[arch](writer, c, load_file(os.path.join(hf_dir, "model.safetensors")))
    if arch in ("granite", "granitemoe"):
        writer.add_vocab_size(c["vocab_size"])
    write_tokenizer(writer, hf_dir)

    def rename(name: str) -> str | None:
        stem, _, suffix = name.rpartition(".")
        if stem.endswith(("input_linear_gate", "input_linear_up")):  # GraniteMoE's split
            which = "gate" if stem.endswith("gate") else "up"
            return f"blk.{stem.split('.')[2]}.ffn_{which}_exps.{suffix}"
        gguf_stem = names.get_name(stem)
        return None if gguf_stem is None else f"{gguf_stem}.{suffix}"

    write_tensors(writer, names, tensors, rename=rename, q8_0=lambda gguf_name, array: (
        q8_0 and array.ndim >= 2 and array.shape[-1] % 32 == 0
        and not any(k in gguf_name for k in _F32)))
    return path


@pytest.fixture(scope="module")
def gguf_files(tiny_model_factory, tmp_path_factory) -> dict[str, tuple[str, str]]:
    return write_gguf_files(tiny_model_factory, tmp_path_factory,
                            {case: (cls, overrides) for case, (_, cls, overrides) in CASES.items()},
                            lambda hf_dir, path, case: write_gguf(hf_dir, path, CASES[case][0]),
                            lambda case: f"tiny-{case}.F32.gguf")  # fmt: skip


test_engine_matches_hf, test_logits_match_hf = hf_comparison_tests(list(CASES))


def _linear_methods(llm: LLM) -> dict[str, str]:
    """Linear module name -> its quantization method's class name."""
    return {name: type(module.quant_method).__name__
            for name, module in loaded_model(llm).named_modules()
            if hasattr(module, "quant_method")}  # fmt: skip


@pytest.mark.parametrize("case", Q8_0_CASES)
def test_q8_0_quantized_equals_dequantized(tiny_model_factory, tmp_path, case):
    """A Q8_0 file run with its linears kept in their blocks (--quantization gguf: Granite's
    residual multiplier taken by the block scales, Falcon's / BLOOM's fused q|k|v and GPT-J's
    q/k rows regrouped as whole block rows) equals the same file dequantized at load."""
    arch, config_cls, overrides = CASES[case]
    path = write_gguf(tiny_model_factory(config_cls, **overrides),
                      str(tmp_path / f"tiny-{case}.Q8_0.gguf"), arch, q8_0=True)  # fmt: skip
    prompts = random_prompts([5, 19], 300)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=2)
    runs = {}
    for quantization in ("gguf", "none"):
        llm = LLM(path, quantization=quantization, kv_cache_memory="4MiB")
        methods = _linear_methods(llm)
        expected = "GGUFLinearMethod" if quantization == "gguf" else "UnquantizedLinearMethod"
        assert methods and set(methods.values()) == {expected}, methods
        runs[quantization] = llm.generate(prompts, params, use_tqdm=False)
    for quantized, dequantized in zip(runs["gguf"], runs["none"]):
        _assert_same_greedy(quantized.outputs[0], dequantized.outputs[0])


def _assert_same_greedy(ours, ref, atol: float = 5e-3) -> None:
    """Equal tokens with logprobs within atol, except that the run may part where the
    reference's two best tokens were within 2 * atol (the kernels' int8 activations move
    logprobs by ~1e-3: a near-tie may go either way; then the rest is not comparable)."""
    parted = next((i for i, (a, b) in enumerate(zip(ours.token_ids, ref.token_ids)) if a != b),
                  len(ref.token_ids))  # fmt: skip
    for i in range(parted):
        token = ref.token_ids[i]
        assert abs(ours.logprobs[i][token].logprob - ref.logprobs[i][token].logprob) < atol, i
    if parted < len(ref.token_ids):
        step = ref.logprobs[parted]
        best, second = sorted((v.logprob for v in step.values()), reverse=True)[:2]
        assert best - second < 2 * atol and ours.token_ids[parted] in step, (parted, step)


def test_scaled_gguf_weight_keeps_its_factor():
    """Granite's residual multiplier on a weight kept in Q8_0 blocks: decoded (the kernels'
    path), dequantized, and after a tensor-parallel narrow or a row reorder, it is the factor
    times the values."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from pagedllm.model_executor.layers.weight_utils import take_rows
    from pagedllm.model_executor.model_loader.gguf import GGUFWeight

    values = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    weight = GGUFWeight(quantize(values, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0,
                        (8, 64))  # fmt: skip
    plain, scaled = weight.dequantize(), weight.scaled(0.4)
    torch.testing.assert_close(scaled.dequantize(), plain * 0.4)
    torch.testing.assert_close(scaled.decode().dequantize(), plain * 0.4)
    torch.testing.assert_close(scaled.narrow(0, 2, 4).decode().dequantize(), plain[2:6] * 0.4)
    torch.testing.assert_close(scaled.narrow(1, 32, 32).dequantize(), plain[:, 32:] * 0.4)
    rows = torch.tensor([3, 0, 5])
    torch.testing.assert_close(take_rows(scaled, rows).dequantize(), plain[rows] * 0.4)
