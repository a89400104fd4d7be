"""AWQ and GPTQ checkpoints (random 4-bit codes packed exactly as AutoAWQ / AutoGPTQ store them)
load, are detected from config.json, and match their dequantized float references."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM
from pagedllm.model_executor.model_loader.config import load_model_config
from tests.quantization.checkpoints import (
    assert_greedy_agrees,
    engine_logits,
    greedy_with_logprobs,
    random_prompts,
    write_awq_checkpoint,
    write_gptq_checkpoint,
)

PROMPTS = random_prompts([5, 19, 33], seed=7)


def _greedy(model_dir: str, **kwargs):
    return greedy_with_logprobs(LLM(model_dir, kv_cache_memory="32MiB", max_model_len=128,
                                    **kwargs), PROMPTS)  # fmt: skip


def _linear_weights(model_dir: str) -> dict[str, torch.Tensor]:
    """Each linear layer's weight as the engine computes with it (dequantized if quantized)."""
    from pagedllm.model_executor.layers.linear import LinearBase
    from pagedllm.model_executor.model_loader import get_model

    model = get_model(load_model_config(model_dir, max_model_len=64), "cpu")
    return {
        name: (m.qweight_kernel.dequantize() if hasattr(m, "qweight_kernel") else m.weight)
        for name, m in model.named_modules()
        if isinstance(m, LinearBase)
    }


def _assert_matches_reference(qdir: str, rdir: str, method: str) -> None:
    assert load_model_config(qdir).quantization == method  # detected from config.json
    got, want = _linear_weights(qdir), _linear_weights(rdir)
    assert got.keys() == want.keys()
    for name in got:  # the int4 kernel holds scales/zeros in bf16 and rounds its output to bf16
        torch.testing.assert_close(got[name], want[name], rtol=8e-3, atol=2e-3, msg=name)
    logits = engine_logits(qdir, PROMPTS, quantization=method)
    reference = engine_logits(rdir, PROMPTS, quantization=None)
    for g, w in zip(logits, reference):
        assert float((g - w).norm() / w.norm()) < 2e-2  # bf16 activations through 2 layers
    assert_greedy_agrees(_greedy(qdir), _greedy(rdir))


@pytest.mark.parametrize("group_size", [32, 64])
def test_awq_matches_dequantized_reference(tiny_llama_dir, tmp_path, group_size):
    qdir, rdir = write_awq_checkpoint(tiny_llama_dir, str(tmp_path), group_size)
    _assert_matches_reference(qdir, rdir, "awq")


@pytest.mark.parametrize(
    "act_order, fmt", [(False, "gptq"), (True, "gptq"), (False, "gptq_v2")]
)
def test_gptq_matches_dequantized_reference(tiny_llama_dir, tmp_path, act_order, fmt):
    qdir, rdir = write_gptq_checkpoint(tiny_llama_dir, str(tmp_path), 32, act_order, fmt)
    _assert_matches_reference(qdir, rdir, "gptq")


def test_gptq_act_order_permutes_inputs(tiny_llama_dir, tmp_path):
    from pagedllm.model_executor.model_loader import get_model

    qdir, _ = write_gptq_checkpoint(tiny_llama_dir, str(tmp_path), 32, act_order=True)
    model = get_model(load_model_config(qdir, max_model_len=64), "cpu")
    kernel = model.model.layers[0].self_attn.qkv_proj.qweight_kernel
    assert kernel.input_perm is not None
    assert type(kernel).__name__ in ("Int4GroupWeight", "PackedGroupWeight")


def test_awq_checkpoint_refuses_other_methods(tiny_llama_dir, tmp_path):
    qdir, _ = write_awq_checkpoint(tiny_llama_dir, str(tmp_path))
    for method in ("none", "int8", "gptq"):
        with pytest.raises(ValueError, match="awq"):
            load_model_config(qdir, quantization=method)


def test_awq_with_qkv_bias(tiny_model_factory, tmp_path):
    """Qwen2 (q/k/v bias): biases stay float and are added after the int4 matmul."""
    model_dir = tiny_model_factory("Qwen2Config")
    qdir, rdir = write_awq_checkpoint(model_dir, str(tmp_path), 32)
    _assert_matches_reference(qdir, rdir, "awq")
