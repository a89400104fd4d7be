"""GGUF files: metadata -> a transformers config, and the tensors under their HF names.

One GGUFFile (gguf_file.py) per file and process, shared by the config, the tokenizer and the
weight loader while the model loads.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pagedllm.logger import init_logger
from pagedllm.model_executor.model_loader import gguf_families2
from pagedllm.model_executor.model_loader import gguf_families_qwen_gemma as qwen_gemma
from pagedllm.model_executor.model_loader.gguf_file import GGUFFile
from pagedllm.model_executor.model_loader.gguf_names import (
    LLAMA_BLOCK_NAMES,
    LLAMA_GLOBAL_NAMES,
    table_hf_name,
)

logger = init_logger(__name__)

GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    # llama.cpp splits InternLM2's wqkv into Llama's q/k/v tensors (q/k permuted as Llama's):
    # in a GGUF it is a Llama
    "internlm2": "LlamaForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "command-r": "CohereForCausalLM",
    "stablelm": "StableLmForCausalLM",
    "phi2": "PhiForCausalLM",
    "glm4": "Glm4ForCausalLM",
    # (DeepseekV3ForCausalLM where the file's router gating is sigmoid: see _deepseek2_config)
    "deepseek2": "DeepseekV2ForCausalLM",
    "dbrx": "DbrxForCausalLM",
    "glm4moe": "Glm4MoeForCausalLM",
    **qwen_gemma.ARCHITECTURES,
}
"""GGUF `general.architecture` -> the HF architecture (model registry key) we load it as."""
_PERMUTED_QK = {"llama", "internlm2"}
"""Archs whose q/k rows llama.cpp permutes to interleaved rotary pairs (see _unpermute_rows)."""
_NORM_PLUS_ONE = {"gemma3", *qwen_gemma.NORM_PLUS_ONE}
"""Archs whose norm weights llama.cpp stores as (1 + w) where HF stores w (Gemma's norms)."""

_ARCH_GLOBAL_NAMES = {"phi2": {**LLAMA_GLOBAL_NAMES, "output_norm": "model.final_layernorm"}}
"""Archs whose global tensors have other HF names than Llama's."""
_ARCH_BLOCK_NAMES = {
    "llama": LLAMA_BLOCK_NAMES,
    "internlm2": LLAMA_BLOCK_NAMES,
    # OLMo 2's post-norm block: no input norms; q/k norms over the whole projection; rotary
    # rotate-half as HF's (llama.cpp's NEOX rope: q/k rows not permuted)
    "olmo2": {
        **{k: v for k, v in LLAMA_BLOCK_NAMES.items() if k not in ("attn_norm", "ffn_norm")},
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    # Command-R's parallel block: one norm; per-head q/k norms ([heads, head_dim]); the rotary
    # pairs adjacent dims in HF and in llama.cpp alike (q/k rows as HF's)
    "command-r": {
        **{k: v for k, v in LLAMA_BLOCK_NAMES.items() if k != "ffn_norm"},
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
    },
    # StableLM: LayerNorms with bias (their .bias tensors map by the same names); the per-head
    # q/k norms stacked [heads, head_dim]; q/k rows as HF's (llama.cpp's NEOX rope)
    "stablelm": {
        **LLAMA_BLOCK_NAMES,
        "attn_q_norm": "self_attn.q_layernorm",
        "attn_k_norm": "self_attn.k_layernorm",
    },
    # Phi-2 (transformers' format, q/k/v separate; the original fused attn_qkv is not read):
    # one LayerNorm for the parallel block, the plain fc1/fc2 MLP, biases by the same names;
    # q/k rows as HF's (llama.cpp's NEOX rope)
    "phi2": {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.dense",
        "ffn_up": "mlp.fc1",
        "ffn_down": "mlp.fc2",
    },
    # GLM-4's sandwich norms under HF's names (llama.cpp: post_attention_norm on the attention
    # output, ffn_norm before the MLP); ffn_up is HF's stored gate_up_proj ([gate | up] rows);
    # q/k rows as HF's (both pair adjacent dims: llama.cpp's "normal" rope)
    "glm4": {
        **{k: v for k, v in LLAMA_BLOCK_NAMES.items() if k not in ("ffn_gate", "ffn_up")},
        "ffn_up": "mlp.gate_up_proj",
        "post_attention_norm": "post_self_attn_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_mlp_layernorm",
    },
    # DeepSeek-V2/V3 (MLA + MoE): HF's names, except what llama.cpp's converter reshapes, which
    # the model's loader puts back (models/deepseek_v2.py): kv_b split into attn_k_b ([H, L, Dn],
    # transposed per head) and attn_v_b, the routed experts stacked per projection ([E, I, H]);
    # rope rows as HF's (llama.cpp's "normal" rope pairs adjacent dims, as DeepSeek's)
    "deepseek2": {
        **LLAMA_BLOCK_NAMES,
        "attn_q_a": "self_attn.q_a_proj",
        "attn_q_a_norm": "self_attn.q_a_layernorm",
        "attn_q_b": "self_attn.q_b_proj",
        "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
        "attn_kv_a_norm": "self_attn.kv_a_layernorm",
        "attn_kv_b": "self_attn.kv_b_proj",
        "attn_k_b": "self_attn.k_b_proj",
        "attn_v_b": "self_attn.v_b_proj",
        "ffn_gate_inp": "mlp.gate",
        "exp_probs_b": "mlp.gate.e_score_correction_bias",
        "ffn_gate_exps": "mlp.experts.gate_proj",
        "ffn_up_exps": "mlp.experts.up_proj",
        "ffn_down_exps": "mlp.experts.down_proj",
        "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
        "ffn_up_shexp": "mlp.shared_experts.up_proj",
        "ffn_down_shexp": "mlp.shared_experts.down_proj",
    },
    # DBRX: Wqkv fused as attn_qkv (q/k rows as HF's: llama.cpp's NEOX rope), norm_2 as
    # attn_output_norm; the experts stacked per projection, [E, I, H] for w1 / v1 and [E, H, I]
    # for w2 (the converter transposes it per expert), unstacked by models/dbrx.py
    "dbrx": {
        "attn_norm": "input_layernorm",
        "attn_qkv": "self_attn.qkv_proj",
        "attn_output": "self_attn.o_proj",
        "attn_output_norm": "post_attention_layernorm",
        "ffn_gate_inp": "mlp.gate",
        "ffn_gate_exps": "mlp.experts.w1",
        "ffn_up_exps": "mlp.experts.v1",
        "ffn_down_exps": "mlp.experts.w2",
    },
    # GLM-4-MoE: HF's names (post_attention_layernorm is llama.cpp's post_attention_norm here,
    # the pre-MLP norm), DeepSeek's MoE tensors (experts stacked per projection, put back by
    # models/glm4_moe.py); q/k rows as HF's (NEOX rope); the nextn (MTP) tensors are skipped
    "glm4moe": {
        **{k: v for k, v in LLAMA_BLOCK_NAMES.items() if k != "ffn_norm"},
        "post_attention_norm": "post_attention_layernorm",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "ffn_gate_inp": "mlp.gate",
        "exp_probs_b": "mlp.gate.e_score_correction_bias",
        "ffn_gate_exps": "mlp.experts.gate_proj",
        "ffn_up_exps": "mlp.experts.up_proj",
        "ffn_down_exps": "mlp.experts.down_proj",
        "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
        "ffn_up_shexp": "mlp.shared_experts.up_proj",
        "ffn_down_shexp": "mlp.shared_experts.down_proj",
    },
    # Gemma 3's sandwich norms: llama.cpp's ffn_norm is the *pre*-feed-forward norm there.
    "gemma3": {
        **LLAMA_BLOCK_NAMES,
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    **qwen_gemma.BLOCK_NAMES,
}

# granite, granitemoe, falcon, bloom, starcoder, gptj: names, configs and layouts in
# gguf_families2.py
GGUF_ARCHITECTURES.update(gguf_families2.ARCHITECTURES)
_PERMUTED_QK |= gguf_families2.PERMUTED_QK


@dataclass
class GGUFWeight:
    """A tensor still in its GGUF encoding (for quantized execution; see iterate_gguf_weights)."""

    data: np.ndarray  # [rows, bytes_per_row] for block-quantized types, [rows, cols] otherwise
    qtype: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # the HF (torch) shape once dequantized, e.g. [out, in]
    multiplier: float = 1.0
    """A factor the values take when decoded (Granite's residual multiplier folded into a weight
    kept in its blocks: the per-group scales take it, the codes stay)."""

    def dim(self) -> int:
        return len(self.shape)

    def narrow(self, dim: int, start: int, length: int) -> GGUFWeight:
        """Rows (dim 0) or columns (dim 1) [start, start + length) still in blocks: a tensor
        parallel rank's slice. Columns must fall on block boundaries (32 values for Q4_0/Q4_1/
        Q8_0, 256 for the K types), which holds for every split of a real model's dims."""
        if dim == 0:
            return GGUFWeight(self.data[start : start + length], self.qtype,
                              (length, *self.shape[1:]), self.multiplier)
        assert dim == 1 and len(self.shape) == 2, f"cannot narrow dim {dim} of {self.shape}"
        from gguf.constants import GGML_QUANT_SIZES

        block_values, block_bytes = GGML_QUANT_SIZES[self.qtype]
        if start % block_values or length % block_values:
            raise ValueError(f"columns [{start}, {start + length}) split {self.qtype.name} "
                             f"blocks of {block_values}")
        first, count = start // block_values * block_bytes, length // block_values * block_bytes
        data = np.ascontiguousarray(self.data[:, first : first + count])
        return GGUFWeight(data, self.qtype, (self.shape[0], length), self.multiplier)

    def scaled(self, factor: float) -> GGUFWeight:
        """The same blocks standing for `factor` times the values."""
        return dataclasses.replace(self, multiplier=self.multiplier * factor)

    def decode(self) -> Any:
        """The blocks as integer codes + per-group scales (a GroupQuant), without float."""
        from pagedllm.model_executor.quantization.gguf_blocks import decode_gguf_blocks

        quant = decode_gguf_blocks(self.data, self.qtype, self.shape)
        if self.multiplier == 1.0:
            return quant
        zeros = None if quant.zeros is None else quant.zeros * self.multiplier
        return dataclasses.replace(quant, scales=quant.scales * self.multiplier, zeros=zeros)

    def dequantize(self) -> torch.Tensor:
        """float32 in the HF shape (a copy, never a view of the mapped file)."""
        from gguf.quants import dequantize

        values = dequantize(self.data, self.qtype).reshape(self.shape)
        if not values.flags.writeable or values.dtype != np.float32:  # a view of the mmap
            values = values.astype(np.float32)
        if self.multiplier != 1.0:
            values = values * np.float32(self.multiplier)
        return torch.from_numpy(values)


@functools.lru_cache(maxsize=4)
def open_gguf(path: str) -> GGUFFile:
    """The (memory-mapped) GGUFFile of `path`, parsed once while loading (config, tokenizer and
    weights all read it); release_gguf_readers() drops it afterwards. The metadata they read
    is checked here once (gguf_metadata.py): a wrong type is a ValueError naming the key."""
    from pagedllm.model_executor.model_loader.gguf_metadata import check_gguf_metadata

    reader = GGUFFile(path)
    check_gguf_metadata(reader.fields, path, GGUF_ARCHITECTURES)
    return reader


def release_gguf_readers() -> None:
    """Drop the parsed files once the model and tokenizer are built: the vocabulary lists and
    the mapped pages of the file (~100 MiB for SmolLM2) are not needed any more. A later
    open_gguf parses the file again. (No gc.collect: the readers hold no reference cycles, so
    dropping them frees them, and the resident size with the engine ready is the same without
    it; a full collection took ~0.3-1.7 s at every engine start in a process that has imported
    transformers.)"""
    import ctypes

    if open_gguf.cache_info().currsize == 0:  # nothing parsed (a safetensors model)
        return
    open_gguf.cache_clear()
    try:  # hand the freed heap back to the OS (glibc keeps it otherwise)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def gguf_field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    """A metadata value (str, number or list), or `default` if the file does not have it."""
    return reader.fields.get(key, default)


def gguf_architecture(reader: GGUFFile) -> str:
    arch = gguf_field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; supported: {sorted(GGUF_ARCHITECTURES)}"
        )
    return arch


def gguf_hf_config(path: str) -> Any:
    """A transformers config equivalent to the one transformers derives from the file."""
    reader = open_gguf(path)
    arch = gguf_architecture(reader)
    if arch in gguf_families2.ARCHITECTURES:
        return gguf_families2.hf_config(reader, arch, _common_config(reader, arch),
                                        _rope_parameters)
    if arch in qwen_gemma.ARCHITECTURES:
        return qwen_gemma.hf_config(reader, arch, _common_config, _rope_parameters)
    if arch == "gemma3":
        return _gemma3_config(reader)
    if arch == "olmo2":
        return _olmo2_config(reader)
    if arch == "command-r":
        return _command_r_config(reader)
    if arch == "stablelm":
        return _stablelm_config(reader)
    if arch == "phi2":
        return _phi2_config(reader)
    if arch == "glm4":
        return _glm4_config(reader)
    if arch == "deepseek2":
        from pagedllm.model_executor.model_loader.gguf_deepseek import deepseek2_config

        return deepseek2_config(reader, _common_config(reader, "deepseek2"))
    if arch in ("dbrx", "glm4moe"):
        from pagedllm.model_executor.model_loader import gguf_moe

        common = _common_config(reader, arch)
        if arch == "dbrx":
            return gguf_moe.dbrx_config(reader, common)

        def meta(key: str, default: Any = None) -> Any:
            return gguf_field(reader, f"glm4moe.{key}", default)

        return gguf_moe.glm4_moe_config(reader, common, _rope_parameters(meta))
    return _llama_config(reader, path, arch)


def _common_config(reader: GGUFFile, arch: str) -> dict[str, Any]:
    """The config fields every arch reads the same way."""

    def meta(key: str, default: Any = None) -> Any:
        return gguf_field(reader, f"{arch}.{key}", default)

    num_heads = meta("attention.head_count")
    hidden_size = meta("embedding_length")
    tensor_names = {t.name for t in reader.tensors}
    token_ids = {
        f"{name}_token_id": gguf_field(reader, f"tokenizer.ggml.{key}_token_id")
        for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))
    }
    return dict(
        architectures=[GGUF_ARCHITECTURES[arch]],
        vocab_size=meta("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"]),
        hidden_size=hidden_size,
        intermediate_size=meta("feed_forward_length"),
        num_hidden_layers=meta("block_count"),
        num_attention_heads=num_heads,
        num_key_value_heads=meta("attention.head_count_kv", num_heads),
        head_dim=meta("attention.key_length") or hidden_size // num_heads,
        max_position_embeddings=meta("context_length"),
        rms_norm_eps=meta("attention.layer_norm_rms_epsilon", 1e-6),
        tie_word_embeddings="output.weight" not in tensor_names,
        **token_ids,
    )


def _gemma3_config(reader: GGUFFile) -> Any:
    """As transformers' GGUF loader builds it: Gemma3TextConfig defaults (local rope base 10 000,
    a global layer every 6th, query_pre_attn_scalar 256) plus the file's values."""
    from transformers import Gemma3TextConfig

    common = _common_config(reader, "gemma3")
    return Gemma3TextConfig(
        **common,
        sliding_window=gguf_field(reader, "gemma3.attention.sliding_window"),
        rope_theta=gguf_field(reader, "gemma3.rope.freq_base", 1e6),
    )


def _olmo2_config(reader: GGUFFile) -> Any:
    from transformers import Olmo2Config

    def meta(key: str, default: Any = None) -> Any:
        return gguf_field(reader, f"olmo2.{key}", default)

    return Olmo2Config(**_common_config(reader, "olmo2"), rope_parameters=_rope_parameters(meta))


def _command_r_config(reader: GGUFFile) -> Any:
    from transformers import CohereConfig

    def meta(key: str, default: Any = None) -> Any:
        return gguf_field(reader, f"command-r.{key}", default)

    common = _common_config(reader, "command-r")
    # NOTE: LayerNorms: no rms_norm_eps (it would win over layer_norm_eps, see llama.norm_eps)
    common["rms_norm_eps"] = None
    return CohereConfig(
        **common,
        layer_norm_eps=meta("attention.layer_norm_epsilon", 1e-5),
        logit_scale=meta("logit_scale", 1.0),
        use_qk_norm="blk.0.attn_q_norm.weight" in {t.name for t in reader.tensors},
        rope_parameters=_rope_parameters(meta),
    )


def _stablelm_config(reader: GGUFFile) -> Any:
    from transformers import StableLmConfig

    def meta(key: str, default: Any = None) -> Any:
        return gguf_field(reader, f"stablelm.{key}", default)

    common = _common_config(reader, "stablelm")
    common["rms_norm_eps"] = None  # LayerNorms (see _command_r_config)
    tensor_names = {t.name for t in reader.tensors}
    head_dim = common["head_dim"]
    partial = meta("rope.dimension_count", head_dim) / head_dim
    return StableLmConfig(
        **common,
        layer_norm_eps=meta("attention.layer_norm_epsilon", 1e-5),
        use_parallel_residual=bool(meta("use_parallel_residual", False)),
        use_qkv_bias="blk.0.attn_q.bias" in tensor_names,
        qk_layernorm="blk.0.attn_q_norm.weight" in tensor_names,
        partial_rotary_factor=partial,
        rope_parameters={**_rope_parameters(meta), "partial_rotary_factor": partial},
    )


def _phi2_config(reader: GGUFFile) -> Any:
    from transformers import PhiConfig

    def meta(key: str, default: Any = None) -> Any:
        return gguf_field(reader, f"phi2.{key}", default)

    common = _common_config(reader, "phi2")
    common["rms_norm_eps"] = None  # LayerNorms (see _command_r_config)
    head_dim = common["head_dim"]
    partial = meta("rope.dimension_count", head_dim) / head_dim
    return PhiConfig(
        **common,
        layer_norm_eps=meta("attention.layer_norm_epsilon", 1e-5),
        hidden_act="gelu_new",
        partial_rotary_factor=partial,
        rope_parameters={**_rope_parameters(meta), "partial_rotary_factor": partial},
    )


def _glm4_config(reader: GGUFFile) -> Any:
    from transformers import Glm4Config

    def meta(key: str, default: Any = None) -> Any:
        return gguf_field(reader, f"glm4.{key}", default)

    common = _common_config(reader, "glm4")
    head_dim = common["head_dim"]
    partial = meta("rope.dimension_count", head_dim // 2) / head_dim
    return Glm4Config(
        **common,
        attention_bias="blk.0.attn_q.bias" in {t.name for t in reader.tensors},
        partial_rotary_factor=partial,
        rope_parameters={**_rope_parameters(meta), "partial_rotary_factor": partial},
    )


def _llama_config(reader: GGUFFile, path: str, arch: str = "llama") -> Any:
    """Llama's config from the `<arch>.*` fields of a Llama-layout arch."""
    from transformers import LlamaConfig

    tensor_names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in tensor_names:
        raise ValueError(f"{path}: GGUF rope_freqs (Llama 3.1+ rope scaling) is not supported yet")

    def meta(key: str, default: Any = None) -> Any:
        return gguf_field(reader, f"{arch}.{key}", default)

    return LlamaConfig(
        **_common_config(reader, arch),
        unk_token_id=gguf_field(reader, "tokenizer.ggml.unknown_token_id"),
        rope_parameters=_rope_parameters(meta),
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        mlp_bias="blk.0.ffn_up.bias" in tensor_names,
    )


def _rope_parameters(meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": meta("rope.freq_base", 1e4)}
    scaling = meta("rope.scaling.type")
    if scaling in (None, "none"):
        return params
    if scaling != "linear":
        raise ValueError(f"GGUF rope scaling {scaling!r} is not supported (supported: linear)")
    return {**params, "rope_type": "linear", "factor": meta("rope.scaling.factor")}


def gguf_eos_token_ids(path: str) -> set[int]:
    """EOS plus the end-of-turn / end-of-message tokens the file declares."""
    reader = open_gguf(path)
    keys = ("eos_token_id", "eot_token_id", "eom_token_id")
    return {v for k in keys if (v := gguf_field(reader, f"tokenizer.ggml.{k}")) is not None}


def gguf_to_hf_name(name: str, arch: str = "llama") -> str | None:
    """"blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"; None if unknown."""
    if arch in gguf_families2.ARCHITECTURES:
        return gguf_families2.hf_name(name, arch)
    if arch == "mamba":
        return qwen_gemma.mamba_hf_name(name)
    return table_hf_name(name, _ARCH_GLOBAL_NAMES.get(arch, LLAMA_GLOBAL_NAMES), "model.layers",
                         _ARCH_BLOCK_NAMES[arch])


def iterate_gguf_weights(
    path: str, dequantize: bool = True, keep_quantized: bool = False
) -> Iterator[tuple[str, torch.Tensor | GGUFWeight]]:
    """(hf_name, tensor) for every tensor of a GGUF file of a supported arch.

    dequantize=True: float32 torch tensors in the HF shape. dequantize=False: GGUFWeight with the
    raw blocks, for a quantized-execution method to repack. keep_quantized=True: GGUFWeight for
    the block-quantized linear weights and vocabulary tables (the layers take their codes
    directly), float32 for the rest.
    Either way the tensors already follow HF's conventions: q/k rows in rotate-half order, Gemma
    norms as w (not 1 + w).
    """
    weights = _iterate_gguf_tensors(path, dequantize, keep_quantized)
    reader = open_gguf(path)
    if (arch := gguf_architecture(reader)) in gguf_families2.ARCHITECTURES:
        return gguf_families2.to_hf_layout(reader, arch, weights)  # (fused rows, split experts)
    return weights


def _iterate_gguf_tensors(
    path: str, dequantize: bool, keep_quantized: bool
) -> Iterator[tuple[str, torch.Tensor | GGUFWeight]]:
    """iterate_gguf_weights, one GGUF tensor at a time."""
    from tqdm import tqdm

    from pagedllm import envs  # no progress bar in --log-format json logs

    reader = open_gguf(path)
    arch = gguf_architecture(reader)
    num_heads = gguf_field(reader, f"{arch}.attention.head_count")
    num_kv_heads = gguf_field(reader, f"{arch}.attention.head_count_kv", num_heads)
    heads_of = {"self_attn.q_proj": num_heads, "self_attn.k_proj": num_kv_heads}
    for tensor in tqdm(reader.tensors, desc="Loading GGUF weights", unit="tensor", leave=False,
                       disable=envs.log_format() == "json"):
        hf_name = gguf_to_hf_name(tensor.name, arch)
        if hf_name is None and ".nextn." in tensor.name:
            continue  # a multi-token-prediction layer's own tensors (GLM-4-MoE): not run
        if hf_name is None and tensor.name in qwen_gemma.SKIPPED_TENSORS:
            continue  # read into the config (Phi-3's longrope factors)
        if hf_name is None:
            logger.warning("skipping GGUF tensor %s: no HF counterpart", tensor.name)
            continue
        data = tensor.data
        # "self_attn.q_proj" of "model.layers.3.self_attn.q_proj.weight"; "lm_head" has no parent
        module = ".".join(hf_name.split(".")[-3:-1])
        if arch in _PERMUTED_QK and module in heads_of:
            data = _unpermute_rows(data, heads_of[module])
        if arch in _NORM_PLUS_ONE and hf_name.endswith("norm.weight"):
            data = data - 1  # F32 (norms are never quantized); a copy, not the mmap
        shape = tuple(int(d) for d in reversed(tensor.shape))
        data, shape = qwen_gemma.to_hf_layout(arch, hf_name, data, shape)
        weight = GGUFWeight(data, tensor.tensor_type, shape)
        raw = not dequantize or (keep_quantized and is_block_quantized(weight.qtype)
                                 and not _is_router(hf_name))
        yield hf_name, (weight if raw else weight.dequantize())


_EMBEDDING_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def _is_router(hf_name: str) -> bool:
    """A module the gguf quantization keeps float (quantization.base.ROUTER_GATES)."""
    from pagedllm.model_executor.quantization.base import ROUTER_GATES, is_layer_skipped

    return is_layer_skipped(hf_name.rpartition(".")[0], ROUTER_GATES)


def is_block_quantized(qtype: Any) -> bool:
    from gguf import GGMLQuantizationType as T

    return qtype not in (T.F32, T.F16, T.BF16, T.F64)


def is_quantized_linear(hf_name: str, qtype: Any) -> bool:
    """A linear layer's weight stored in a block-quantized GGUF type."""
    linear = hf_name.endswith(".weight") and hf_name not in _EMBEDDING_NAMES
    return linear and is_block_quantized(qtype)


def gguf_has_quantized_linears(path: str) -> bool:
    reader = open_gguf(path)
    arch = gguf_architecture(reader)
    return any(
        (name := gguf_to_hf_name(t.name, arch)) is not None
        and is_quantized_linear(name, t.tensor_type)
        for t in reader.tensors
    )


def _unpermute_rows(data: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (HF rotate-half -> interleaved pairs).

    Per head, llama.cpp stores rows in the order (0, D/2, 1, D/2+1, ...); HF wants (0, 1, ..., D-1):

        rows [head, pair, half] --swap--> [head, half, pair]

    Rows are whole quantization blocks apart, so this works on quantized data too.
    """
    rows = data.shape[0]
    per_head = data.reshape(num_heads, rows // num_heads // 2, 2, *data.shape[1:])
    return per_head.swapaxes(1, 2).reshape(data.shape)
