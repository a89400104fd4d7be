"""GPT-2 (learned positions, transposed Conv1D weights, fused c_attn, LayerNorm, gelu_new)
against HF transformers, with the LM head tied (GPT-2's default) and untied."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_greedy_matches_hf, assert_logits_match_hf

# NOTE: num_key_value_heads=None drops TINY_LLAMA's GQA setting, which GPT-2 does not have.
_GPT2 = {"num_key_value_heads": None, "n_inner": 128}
VARIANTS = {
    "gpt2": {**_GPT2, "tie_word_embeddings": True},
    "gpt2_untied": {**_GPT2, "activation_function": "relu"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_hf(tiny_model_factory, variant):
    assert_greedy_matches_hf(tiny_model_factory("GPT2Config", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("GPT2Config", **VARIANTS[variant]))


def test_original_openai_checkpoint_names(tiny_model_factory, tmp_path):
    """The hub's gpt2 checkpoints name the body without "transformer." and keep the causal mask
    buffers (h.N.attn.bias); both load, and HF reads the same file."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model_dir = tiny_model_factory("GPT2Config", **VARIANTS["gpt2"])
    shutil.copytree(model_dir, tmp_path, dirs_exist_ok=True)
    tensors = load_file(f"{model_dir}/model.safetensors")
    renamed = {name.removeprefix("transformer."): t for name, t in tensors.items()}
    renamed["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    save_file(renamed, f"{tmp_path}/model.safetensors", metadata={"format": "pt"})
    assert_logits_match_hf(str(tmp_path))
