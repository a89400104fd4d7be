"""llama.cpp GGUFs of qwen2 / qwen2moe / qwen3 / qwen3moe / gemma / gemma2 / phi3 / mamba, written
from tiny random HF models as llama.cpp's converter (convert_hf_to_gguf.py) writes them: the gguf
package's own HF -> GGUF tensor names, each converter class's metadata keys, and its tensor
changes: MoE experts stacked per projection; Gemma's norms stored as (1 + w) and its lm_head
dropped (tied); Phi-3's fused qkv / gate_up and its longrope factors as rope_factors_long /
rope_factors_short tensors; Mamba's A stored as -exp(A_log), its conv1d squeezed, head_count and
feed_forward_length 0. Each must equal its HF model through the whole engine (greedy tokens of a
chunked mixed batch, again from the prefix cache; Mamba has no prefix cache) and in prefill logits;
Q8_0 files (weights kept in their blocks under --quantization gguf) must equal the same file
dequantized at load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from pagedllm import LLM, SamplingParams
from tests.hf_reference import load_hf_model
from tests.models.family_check import assert_logits_match_hf, random_prompts
from tests.models.gguf_fixtures import (
    assert_q8_0_equals_dequantized,
    converter_tensors,
    hf_comparison_tests,
    write_gguf_files,
    write_sentencepiece_gguf,
    write_tensors,
    write_tokenizer,
)
from tests.models.test_phi3 import _longrope
from tests.models.test_state_space_models import MAMBA, _hf_greedy_uncached

_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
_GEMMA = {"head_dim": 16, "tie_word_embeddings": True}  # (the converter drops Gemma's lm_head)
CASES = {
    # arch: (HF config class, overrides of the tiny model)
    "qwen2": ("Qwen2Config", {}),
    "qwen2moe": ("Qwen2MoeConfig", {**_MOE, "shared_expert_intermediate_size": 48}),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),
    "qwen3moe": ("Qwen3MoeConfig", {**_MOE, "norm_topk_prob": True, "head_dim": 32}),
    "gemma": ("GemmaConfig", _GEMMA),
    # (llama.cpp's query scale is 1/sqrt(head_dim) but for the 27B: query_pre_attn_scalar 16)
    "gemma2": ("Gemma2Config", {**_GEMMA, "sliding_window": 8, "query_pre_attn_scalar": 16,
                                "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0}),
    # longrope whose short factors apply (original = max positions: the converter's attn_factor
    # is then 1, HF's default too)
    "phi3": ("Phi3Config", {"partial_rotary_factor": 0.5, "original_max_position_embeddings": 512,
                            "rope_parameters": _longrope(4, partial_rotary_factor=0.5)}),
    "mamba": ("MambaConfig", MAMBA),
}  # fmt: skip
_MODEL_ARCH = {"qwen2": "QWEN2", "qwen2moe": "QWEN2MOE", "qwen3": "QWEN3", "qwen3moe": "QWEN3MOE",
               "gemma": "GEMMA", "gemma2": "GEMMA2", "phi3": "PHI3", "mamba": "MAMBA"}
_F32_ALWAYS = ("ffn_gate_inp", "ssm_conv1d")
"""Kept F32 by the converter's --outtype q8_0 (routers, shared-expert gate, Mamba's conv)."""


def _metadata(writer, arch: str, c: dict) -> None:
    """The keys each converter class writes (set_gguf_parameters)."""
    rope = c.get("rope_parameters") or {}
    if arch == "mamba":
        writer.add_context_length(2**20)
        writer.add_embedding_length(c["hidden_size"])
        writer.add_feed_forward_length(0)
        writer.add_head_count(0)
        writer.add_block_count(c["num_hidden_layers"])
        writer.add_ssm_conv_kernel(c["conv_kernel"])
        writer.add_ssm_inner_size(c["intermediate_size"])
        writer.add_ssm_state_size(c["state_size"])
        writer.add_ssm_time_step_rank(c["time_step_rank"])
        writer.add_layer_norm_rms_eps(c["layer_norm_epsilon"])
        writer.add_ssm_dt_b_c_rms(c["model_type"] == "falcon_mamba")
        return
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_head_count(c["num_attention_heads"])
    writer.add_head_count_kv(c["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    if arch == "phi3":
        head_dim = c["hidden_size"] // c["num_attention_heads"]
        writer.add_rope_scaling_orig_ctx_len(c["original_max_position_embeddings"])
        writer.add_rope_dimension_count(int(c["partial_rotary_factor"] * head_dim))
        writer.add_rope_freq_base(rope["rope_theta"])
        writer.add_sliding_window(c.get("sliding_window") or 0)
        writer.add_rope_scaling_attn_factors(1.0)  # (scale max/original = 1)
        return
    if c.get("head_dim"):
        writer.add_key_length(c["head_dim"])
        writer.add_value_length(c["head_dim"])
    if arch.startswith("gemma"):  # (no rope base: llama.cpp's 10 000, HF's default)
        if arch == "gemma2":
            writer.add_attn_logit_softcapping(c["attn_logit_softcapping"])
            writer.add_final_logit_softcapping(c["final_logit_softcapping"])
            writer.add_sliding_window(c["sliding_window"])
        return
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "yarn":
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if arch.endswith("moe"):
        writer.add_expert_count(c.get("num_local_experts") or c["num_experts"])
        writer.add_expert_used_count(c["num_experts_per_tok"])
        writer.add_expert_feed_forward_length(c["moe_intermediate_size"])
        if c.get("shared_expert_intermediate_size"):
            writer.add_expert_shared_feed_forward_length(c["shared_expert_intermediate_size"])


def _converted_tensors(arch: str, c: dict, tensors: dict[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
    """The converter's modify_tensors: HF name -> tensor, before the GGUF name map (MoE experts
    stacked per projection by converter_tensors)."""

    def changed(name: str, array: np.ndarray) -> dict[str, np.ndarray] | None:
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            return {name: array + 1}
        if arch == "mamba" and name.endswith(".A_log"):
            return {name: -np.exp(array)}
        if arch == "mamba" and name.endswith(".conv1d.weight"):
            return {name: array.squeeze()}
        return None

    out = converter_tensors(tensors, changed)
    if arch == "phi3":  # the longrope factors, as generate_extra_tensors writes them
        rope = c["rope_parameters"]
        out["rope_factors_long.weight"] = np.asarray(rope["long_factor"], np.float32)
        out["rope_factors_short.weight"] = np.asarray(rope["short_factor"], np.float32)
    return out


def write_gguf(hf_dir: str, path: str, arch: str, q8_0: bool = False) -> str:
    """q8_0: the tensors the converter's `--outtype q8_0` quantizes (2+ dims, rows of whole
    blocks, not in _F32_ALWAYS) in Q8_0 blocks, the rest F32."""
    from gguf import GGUFWriter
    from gguf.constants import MODEL_ARCH
    from gguf.tensor_mapping import TensorNameMap

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    names = TensorNameMap(getattr(MODEL_ARCH, _MODEL_ARCH[arch]), c["num_hidden_layers"])
    writer = GGUFWriter(path, arch)
    _metadata(writer, arch, c)
    writer.add_vocab_size(c["vocab_size"])
    write_tokenizer(writer, hf_dir)
    tensors = _converted_tensors(arch, c, load_file(os.path.join(hf_dir, "model.safetensors")))
    # (Mamba's A_log / D: no suffix in the HF name, none in the GGUF name)
    write_tensors(writer, names, tensors, rename=lambda name: (
        name if name.startswith("rope_factors_")
        else names.get_name(name, try_suffixes=(".weight", ".bias"))),
        q8_0=lambda gguf_name, array: (
            q8_0 and array.ndim >= 2 and array.shape[-1] % 32 == 0
            and gguf_name.endswith(".weight") and not any(k in gguf_name for k in _F32_ALWAYS)))
    return path


@pytest.fixture(scope="module")
def gguf_files(tiny_model_factory, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """arch -> (the F32 GGUF, the HF model dir it was written from)."""
    return write_gguf_files(tiny_model_factory, tmp_path_factory, CASES, write_gguf,
                            lambda arch: f"tiny-{arch}.F32.gguf")


test_engine_matches_hf, test_logits_match_hf = hf_comparison_tests(
    [arch for arch in CASES if arch != "mamba"])


@pytest.mark.parametrize("config_cls", ["MambaConfig", "FalconMambaConfig"])
def test_mamba_matches_hf(gguf_files, tiny_model_factory, tmp_path, config_cls):
    """Mamba from its GGUF on the state cache (no prefix cache: no KV to share): greedy tokens of
    the chunked mixed batch, and the prompt logprobs of the prefill. Falcon-Mamba: the same arch
    with ssm.dt_b_c_rms set (its dt/B/C norms)."""
    path, reference_dir = gguf_files["mamba"]
    if config_cls == "FalconMambaConfig":
        reference_dir = tiny_model_factory(config_cls, **MAMBA)
        path = write_gguf(reference_dir, str(tmp_path / "tiny-falcon-mamba.F32.gguf"), "mamba")
    hf = load_hf_model(reference_dir)
    prompts = random_prompts([1, 7, 23], hf.config.vocab_size)
    llm = LLM(path, max_model_len=64, kv_cache_memory="1MiB", max_num_batched_tokens=16,
              max_num_seqs=3)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, prompt_logprobs=0)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [
        _hf_greedy_uncached(hf, p, 8) for p in prompts]
    prompt = prompts[-1]
    with torch.inference_mode():
        expected = torch.log_softmax(hf(input_ids=torch.tensor([prompt])).logits[0, :-1], -1)
    ours = torch.tensor([step[t].logprob for step, t in
                         zip(outputs[-1].prompt_logprobs[1:], prompt[1:])])
    ref = expected[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_qwen2_yarn_logits_match_hf(tiny_model_factory, tmp_path):
    """Qwen2's YaRN (the converter's rope.scaling.type / factor / original_context_length), past
    the original context: prefill logits equal HF's."""
    yarn = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
            "original_max_position_embeddings": 32}
    hf_dir = tiny_model_factory("Qwen2Config", rope_parameters=yarn)
    path = write_gguf(hf_dir, str(tmp_path / "tiny-qwen2-yarn.F32.gguf"), "qwen2")
    assert_logits_match_hf(path, reference_dir=hf_dir)


@pytest.mark.parametrize("arch", ["qwen2", "phi3"])
def test_q8_0_quantized_equals_dequantized(tiny_model_factory, tmp_path, arch):
    """A Q8_0 file run with its linears kept in their blocks (--quantization gguf: Qwen2's
    biased q/k/v, Phi-3's fused qkv / gate_up) equals the same file dequantized at load."""
    config_cls, overrides = CASES[arch]
    assert_q8_0_equals_dequantized(write_gguf(tiny_model_factory(config_cls, **overrides),
                                              str(tmp_path / f"tiny-{arch}.Q8_0.gguf"), arch,
                                              q8_0=True))  # fmt: skip


def _write_sentencepiece_gguf(path: str, arch: str) -> str:
    """A tokenizer-only GGUF of `arch` with a tiny sentencepiece ("llama") vocabulary, as the
    Gemma converters write theirs."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "\u2581", "a", "b", "\u2581a", "ab", "\u2581ab"]
    return write_sentencepiece_gguf(path, arch, tokens,
                                    [0.0] * 4 + [-1.0, -2.0, -3.0, -0.5, -0.7, -0.2],
                                    [3, 3, 3, 2] + [1] * 6)


def test_gemma_sentencepiece_tokenizer(tmp_path):
    """A Gemma 1 file's sentencepiece vocabulary loads (built by pagedllm: gguf_gemma.py) and
    encodes / decodes as transformers' converter does, whether transformers reads it as the
    `gemma` arch (GemmaTokenizer: AutoTokenizer refuses it, it cannot rebuild its config) or the
    same vocabulary in a `gemma2` file (AutoTokenizer). (tests/tokenizer/
    test_gguf_gemma_tokenizer.py compares the whole tokenizer.)"""
    from pagedllm.tokenizer.loader import load_tokenizer, transformers_gguf_tokenizer

    paths = {a: _write_sentencepiece_gguf(str(tmp_path / f"{a}.gguf"), a)
             for a in ("gemma", "gemma2")}  # fmt: skip
    ours = load_tokenizer(paths["gemma"])
    for reference in (transformers_gguf_tokenizer(str(tmp_path), os.path.basename(p))
                      for p in paths.values()):  # fmt: skip
        assert type(reference).__name__ == "GemmaTokenizer" and type(ours) is not type(reference)
        for text in ("ab a", " a  b", "abab"):
            assert ours(text).input_ids == reference(text).input_ids
            assert ours.decode(ours(text).input_ids) == reference.decode(reference(text).input_ids)
    assert ours.bos_token == "<bos>" and ours.eos_token == "<eos>"
