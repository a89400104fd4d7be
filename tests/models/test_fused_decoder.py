"""The fused CPU decoder stack (worker/fused_cpu_stack.py + kernels/csrc/decoder_layer.cpp)
against the eager modules (enforce_eager): the same logprobs bit for bit on mixed batches with
chunked prefill, for every Llama-shaped family and Gemma 1/2/3, dense and quantized; other
families stay eager and the worker says why."""

from __future__ import annotations

import logging

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.kernels import cpu_kernels_available
from pagedllm.worker import fused_cpu_stack
from pagedllm.worker.execution_strategy import EAGER, FUSED_CPU_STACK, ExecutionStrategy
from tests.engine_internals import engine_core
from tests.models.test_gemma import VARIANTS as GEMMA_VARIANTS
from tests.models.test_granite import GRANITE

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")

PROMPTS = [[5 + (7 * i + 3 * j) % 90 for j in range(n)] for i, n in enumerate([3, 17, 40, 1, 26])]
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
                 "rope_theta": 100000.0}  # fmt: skip
"""SmolLM2-135M's layer shape (head_dim 64, 3 query heads per KV head), 2 layers."""
GEMMA2 = GEMMA_VARIANTS["gemma2"][1]
"""Sandwich norms, GeGLU, (1 + w) norms, attention soft cap, a window the prompts cross."""
GEMMA3 = GEMMA_VARIANTS["gemma3"][1]
"""Gemma 2's block with per-head q/k norms, local and global layers of their own rotary."""


def _run(model_dir: str, enforce_eager: bool, prompts=PROMPTS, **kwargs):
    llm = LLM(model_dir, enforce_eager=enforce_eager, kv_cache_memory="16MiB", max_model_len=128,
              max_num_batched_tokens=16, **kwargs)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    runner = engine_core(llm).executor.driver_worker
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outputs], runner


def _logprob_rows(result):
    return [[sorted((t, lp.logprob) for t, lp in step.items()) for step in logprobs]
            for _, logprobs in result]  # fmt: skip


def _assert_fused_equals_eager(model_dir: str, prompts=PROMPTS, **kwargs) -> None:
    fused, fused_runner = _run(model_dir, False, prompts, **kwargs)
    eager, eager_runner = _run(model_dir, True, prompts, **kwargs)
    stack = fused_runner.model.model.layer_runner  # the fused path ran, every layer in it
    assert fused_runner.execution.name == FUSED_CPU_STACK
    assert stack.stack.num_layers() == len(fused_runner.model.model.layers)
    assert eager_runner.execution == ExecutionStrategy(EAGER, "enforce_eager")
    assert eager_runner.model.model.layer_runner is None
    assert [t for t, _ in fused] == [t for t, _ in eager]
    assert _logprob_rows(fused) == _logprob_rows(eager)


@pytest.mark.parametrize(
    "family, overrides, quantization",
    [
        ("LlamaConfig", {}, None),
        ("LlamaConfig", {}, "int4"),
        ("LlamaConfig", {"tie_word_embeddings": True}, "int8"),
        ("LlamaConfig", SMOLLM2_SHAPE, None),
        ("Qwen2Config", {}, None),  # q/k/v bias
        ("Qwen2Config", {}, "int4"),
        ("Qwen3Config", {"head_dim": 16}, None),  # per-head q/k norm
        ("Qwen3Config", {"head_dim": 16, "attention_bias": True}, "int8"),
        ("MistralConfig", {"sliding_window": 8}, None),
        ("GemmaConfig", {"head_dim": 16}, None),  # GeGLU, (1 + w) norms
        ("Gemma2Config", GEMMA2, None),
        ("Gemma2Config", GEMMA2, "int4"),
        ("Gemma3TextConfig", GEMMA3, None),
        ("Gemma3TextConfig", GEMMA3, "int8"),
        ("GraniteConfig", GRANITE, None),  # multipliers: scale, embedding, folded residual
        ("GraniteConfig", GRANITE, "int8"),  # (folded before the load-time quantization)
    ],
)
def test_fused_layers_equal_eager(tiny_model_factory, family, overrides, quantization):
    _assert_fused_equals_eager(tiny_model_factory(family, **overrides), quantization=quantization)


@pytest.mark.parametrize("quantization", [None, "int4"])
def test_fused_mlp_row_blocks_equal_eager(tiny_model_factory, monkeypatch, quantization):
    """The fused MLP in blocks of 3 rows (a long chunk's rows in blocks bound its workspace,
    fused_cpu_stack.mlp_block_rows): 16-token chunks split 3+3+3+3+3+1, the same logprobs as
    the eager MLP over every row at once (each kernel's row bits are its own)."""
    monkeypatch.setattr(fused_cpu_stack, "mlp_block_rows", lambda intermediate_size: 3)
    _assert_fused_equals_eager(tiny_model_factory("LlamaConfig"), quantization=quantization)


def test_mlp_block_rows_bound_the_workspace():
    """A 1B Llama's 8192-wide MLP: blocks of 432 rows, within MLP_BLOCK_BYTES (a 2048-token
    chunk at once held ~220 MiB); narrow MLPs get whole 16-row tiles, tiny budgets one row."""
    budget = fused_cpu_stack.MLP_BLOCK_BYTES
    assert fused_cpu_stack.mlp_block_rows(8192) == 432
    assert 432 * 8192 * 14 <= budget < 448 * 8192 * 14
    assert fused_cpu_stack.mlp_block_rows(1536) % 16 == 0
    assert fused_cpu_stack.mlp_block_rows(8192, budget=10 * 8192 * 14) == 10
    assert fused_cpu_stack.mlp_block_rows(8192, budget=1) == 1


def test_fused_layers_equal_eager_with_fp16_kv_cache(tiny_model_factory):
    """The fused layer's float16 cache write rounds like the eager path's Tensor.to(float16)."""
    _assert_fused_equals_eager(
        tiny_model_factory("Qwen3Config", head_dim=16), kv_cache_dtype="fp16"
    )


def test_fused_layers_equal_eager_with_int8_kv_cache(tiny_model_factory):
    """The fused layer's int8 cache write (kernels/csrc/kv_quant.h) stores quantize_kv's bytes:
    SmolLM2's shape (head_dim 64, GQA 3), the same logprobs as the eager PyTorch write."""
    _assert_fused_equals_eager(
        tiny_model_factory("LlamaConfig", **SMOLLM2_SHAPE), kv_cache_dtype="int8"
    )


def test_fused_layers_equal_eager_gemma3_fp16_kv_cache(tiny_model_factory):
    _assert_fused_equals_eager(tiny_model_factory("Gemma3TextConfig", **GEMMA3),
                               kv_cache_dtype="fp16")  # fmt: skip


@pytest.mark.gguf
def test_smollm2_gguf_fused_equals_eager(smollm2_gguf_path):
    """The real SmolLM2-135M (Q4_1: packed 4-bit linears, 30 layers, tied int8 LM head)."""
    _assert_fused_equals_eager(smollm2_gguf_path, PROMPTS[:2])


@pytest.mark.gguf
@pytest.mark.slow
def test_gemma3_270m_gguf_fused_equals_eager(gemma3_270m_gguf_path):
    """The real Gemma 3 270M (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0 linears, 18 layers of 512-token
    local windows every 6th global, quantized embedding scaled by sqrt(640))."""
    _assert_fused_equals_eager(gemma3_270m_gguf_path, PROMPTS[:2])


def test_other_families_stay_eager_and_say_why(tiny_model_factory, caplog):
    logger = logging.getLogger("pagedllm.worker.execution_strategy")
    logger.addHandler(caplog.handler)  # (pagedllm's loggers do not propagate to the root)
    try:
        mixtral = tiny_model_factory("MixtralConfig", num_local_experts=4, intermediate_size=64)
        _, runner = _run(mixtral, False, PROMPTS[:1])
    finally:
        logger.removeHandler(caplog.handler)
    assert runner.execution.name == EAGER
    assert runner.execution.declined.startswith("layer 0: MixtralSparseMoeBlock")
    assert runner.model.model.layer_runner is None
    assert "execution: eager (layer 0: MixtralSparseMoeBlock" in caplog.text


def test_unknown_and_missing_spec_keys_are_named():
    """The C++ boundary checks DecoderLayerSpec.kernel_args' names, not positions."""
    stack = torch.classes.pagedllm.LlamaDecoderStack()
    with pytest.raises(RuntimeError, match="tensor 'input_norm' missing"):
        stack.add_layer({}, {}, {})
    with pytest.raises(RuntimeError, match="unknown int 'linear_meta'"):
        stack.add_layer(*_minimal_kernel_args(extra_int="linear_meta"))
    tensors, scalars, ints = _minimal_kernel_args(extra_int="sliding_window")
    tensors["kv_cache"] = tensors["kv_cache"].transpose(3, 4)  # written in place: never copied
    with pytest.raises(RuntimeError, match="tensor 'kv_cache' is not contiguous"):
        stack.add_layer(tensors, scalars, ints)
    stack.add_layer(*_minimal_kernel_args(extra_int="sliding_window"))
    assert stack.num_layers() == 1
    with pytest.raises(RuntimeError, match="activation 2"):
        stack.add_layer(*_minimal_kernel_args(extra_int="activation", value=2))
    tensors, scalars, ints = _minimal_kernel_args(extra_int="activation", value=1)
    tensors["attn_out_norm"] = torch.zeros(8)
    with pytest.raises(RuntimeError, match="attn_out_norm and mlp_out_norm go together"):
        stack.add_layer(tensors, scalars, ints)
    tensors["mlp_out_norm"] = torch.zeros(8)
    stack.add_layer(tensors, scalars, ints)
    assert stack.num_layers() == 2


def _minimal_kernel_args(extra_int: str, value: int = 0):
    hidden, heads, head_dim = 8, 2, 4
    w = torch.zeros
    tensors = {"input_norm": w(hidden), "post_norm": w(hidden), "cos_sin_cache": w(4, head_dim),
               "kv_cache": w(2, 1, 4, heads, head_dim), "qkv.weight": w(3 * hidden, hidden),
               "o.weight": w(hidden, hidden), "gate_up.weight": w(16, hidden),
               "down.weight": w(hidden, 8)}  # fmt: skip
    ints = {"num_heads": heads, "num_kv_heads": heads, "head_dim": head_dim,
            "rotary_dim": head_dim, extra_int: value}  # fmt: skip
    return tensors, {"eps": 1e-6, "scale": 0.5}, ints
