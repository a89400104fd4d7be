"""Skipping layers by name: is_layer_skipped's matching, and layers a config names in
modules_to_not_convert (AWQ's checkpoint list; an int8 config's) stay float parameters whose
output is the float matmul, while the rest is quantized."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.kernels import cpu_kernels_available
from pagedllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from pagedllm.model_executor.model_loader import get_model
from pagedllm.model_executor.model_loader.config import load_model_config
from pagedllm.model_executor.quantization.base import is_layer_skipped
from pagedllm.model_executor.quantization.weight_only_int8 import Int8Config
from tests.quantization.checkpoints import (
    assert_greedy_agrees,
    dequantized_reference_dir,
    engine_logits,
    greedy_with_logprobs,
    random_prompts,
    write_awq_checkpoint,
)
from tests.quantization.test_awq_gptq import _assert_matches_reference

DOWN = "model.layers.0.mlp.down_proj"
PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


@pytest.mark.parametrize(
    "entry, skipped",
    [("down_proj", True), ("mlp.down_proj", True), ("layers.0", True), (DOWN, True),
     ("layers.1", False), ("layers.0.mlp.down", False), ("down", False), ("proj", False),
     ("model.layers.0.self_attn", False)],
)  # fmt: skip
def test_entries_name_whole_runs_of_components(entry, skipped):
    assert is_layer_skipped(DOWN, [entry]) is skipped


def test_router_names_do_not_reach_the_experts_or_gate_up():
    assert is_layer_skipped("model.layers.3.mlp.gate", ["mlp.gate"])
    assert not is_layer_skipped("model.layers.3.mlp.gate_up_proj", ["mlp.gate", "gate"])
    assert not is_layer_skipped("model.layers.3.mlp.experts", ["mlp.gate"])
    assert not is_layer_skipped("model.layers.10.mlp.down_proj", ["layers.1"])


def test_merged_layers_are_named_by_their_checkpoint_shards():
    qkv = "model.layers.0.self_attn.qkv_proj"
    assert is_layer_skipped(qkv, ["q_proj", "k_proj", "v_proj"], PACKED)
    assert is_layer_skipped(qkv, ["qkv_proj"], PACKED)
    assert is_layer_skipped(qkv, ["self_attn"], PACKED)
    assert not is_layer_skipped(qkv, ["o_proj"], PACKED)
    with pytest.raises(ValueError, match="one matmul"):
        is_layer_skipped(qkv, ["q_proj"], PACKED)  # q float, k/v quantized: not one method


def _load_int8(model_dir: str, monkeypatch, skipped: list[str]):
    """The model under --quantization int8 with an Int8Config that skips `skipped` (int8 is built
    from the method name, so the test hands the loader its config)."""
    monkeypatch.setattr(Int8Config, "from_hf_config", classmethod(lambda cls, hf: cls(skipped)))
    return get_model(load_model_config(model_dir, max_model_len=64, quantization="int8"), "cpu")


def test_int8_leaves_named_layers_and_the_lm_head_float(tiny_llama_dir, monkeypatch):
    from safetensors.torch import load_file

    checkpoint = load_file(f"{tiny_llama_dir}/model.safetensors")
    model = _load_int8(tiny_llama_dir, monkeypatch, ["down_proj", "lm_head"])
    x = torch.randn(5, model.config.intermediate_size)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, LinearBase)}
    for name, layer in linears.items():
        if name.endswith("down_proj"):
            assert isinstance(layer.quant_method, UnquantizedLinearMethod)
            assert layer.weight.dtype == torch.float32 and not hasattr(layer, "qweight_kernel")
            torch.testing.assert_close(layer.weight, checkpoint[f"{name}.weight"], rtol=0, atol=0)
            torch.testing.assert_close(layer(x), F.linear(x, checkpoint[f"{name}.weight"]))
        else:
            assert hasattr(layer, "qweight_kernel") and "weight" not in layer._parameters, name
    assert model.lm_head.qweight_kernel is None and model.lm_head.weight.dtype == torch.float32
    if cpu_kernels_available():  # the token embedding, not named, is held int8 as before
        assert model.model.embed_tokens.qweight_kernel is not None
    torch.testing.assert_close(model.lm_head.weight, checkpoint["lm_head.weight"], rtol=0, atol=0)


def test_int8_with_skipped_layers_matches_its_reference(tiny_llama_dir, tmp_path, monkeypatch):
    """Logits and greedy tokens against the float checkpoint holding exactly what the quantized
    run computes with: down_proj and the LM head as loaded, the rest dequantized."""
    keep = ("down_proj", "lm_head")
    reference = dequantized_reference_dir(tiny_llama_dir, "int8", str(tmp_path), keep)
    monkeypatch.setattr(Int8Config, "from_hf_config", classmethod(lambda cls, hf: cls(keep)))
    prompts = random_prompts([7, 23, 40])
    got = engine_logits(tiny_llama_dir, prompts, quantization="int8")
    want = engine_logits(reference, prompts, quantization=None)
    for g, w in zip(got, want):
        assert float((g - w).norm() / w.norm()) < 1e-2  # bf16 activations in packed kernels
    from pagedllm import LLM

    kwargs = dict(kv_cache_memory="32MiB", max_model_len=128)
    assert_greedy_agrees(
        greedy_with_logprobs(LLM(tiny_llama_dir, quantization="int8", **kwargs), prompts),
        greedy_with_logprobs(LLM(reference, **kwargs), prompts),
    )


def test_awq_modules_to_not_convert_load_float(tiny_llama_dir, tmp_path):
    """An AWQ checkpoint listing down_proj in modules_to_not_convert stores it float: it loads
    into a float parameter, the rest into the int4 kernel, and the model matches its reference."""
    from safetensors.torch import load_file

    qdir, rdir = write_awq_checkpoint(tiny_llama_dir, str(tmp_path), keep_float=("down_proj",))
    checkpoint = load_file(f"{qdir}/model.safetensors")
    assert "model.layers.0.mlp.down_proj.weight" in checkpoint
    assert "model.layers.0.mlp.gate_proj.qweight" in checkpoint
    model = get_model(load_model_config(qdir, max_model_len=64), "cpu")
    for name, layer in model.named_modules():
        if isinstance(layer, LinearBase):
            assert hasattr(layer, "qweight_kernel") != name.endswith("down_proj"), name
            if name.endswith("down_proj"):
                torch.testing.assert_close(layer.weight, checkpoint[f"{name}.weight"])
    _assert_matches_reference(qdir, rdir, "awq")
