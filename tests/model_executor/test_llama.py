"""Our Llama over paged attention against HF transformers' LlamaForCausalLM (tiny random fp32)."""

from __future__ import annotations

import pytest
import torch

from pagedllm.model_executor.model_loader import get_model
from pagedllm.model_executor.model_loader.config import load_model_config
from tests.hf_reference import hf_logits, load_hf_model
from tests.model_executor.paged import PagedRunner

ATOL = 1e-4


def _prompt(vocab: int, length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (length,), generator=g).tolist()


def _ours(path: str):
    return get_model(load_model_config(path), "cpu")


VARIANTS = {
    "base": {},
    "tied": {"tie_word_embeddings": True},
    "llama3_rope": {
        "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
        },
    },
    "linear_rope": {
        "rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    },
    "bias_head_dim": {"attention_bias": True, "mlp_bias": True, "head_dim": 24},
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_single_sequence_matches_hf(tiny_llama_factory, variant):
    path = tiny_llama_factory(**VARIANTS[variant])
    model = _ours(path)
    hf = load_hf_model(path)
    # long enough for llama3's scaled wavelengths (original_max_position_embeddings=64) to matter
    prompt = _prompt(hf.config.vocab_size, 150, seed=1)
    (ours,) = PagedRunner(model).step({0: prompt})
    torch.testing.assert_close(ours, hf_logits(hf, prompt), atol=ATOL, rtol=0)


def test_tied_lm_head_is_the_embedding(tiny_llama_factory):
    model = _ours(tiny_llama_factory(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_batch_and_chunks_equal_single_pass(tiny_llama_dir):
    model = _ours(tiny_llama_dir)
    vocab = model.config.vocab_size
    a, b = _prompt(vocab, 37, seed=2), _prompt(vocab, 21, seed=3)
    (alone_a,) = PagedRunner(model).step({0: a})
    (alone_b,) = PagedRunner(model).step({0: b})
    batch_a, batch_b = PagedRunner(model).step({0: a, 1: b})
    torch.testing.assert_close(batch_a, alone_a, atol=ATOL, rtol=0)
    torch.testing.assert_close(batch_b, alone_b, atol=ATOL, rtol=0)
    # a in two chunks (the second reads the first's KV from the cache), b decoding alongside
    runner = PagedRunner(model)
    (first,) = runner.step({0: a[:16]})
    second, _ = runner.step({0: a[16:], 1: b})
    torch.testing.assert_close(torch.cat([first, second]), alone_a, atol=ATOL, rtol=0)
    # token-by-token decode of b's tail
    runner = PagedRunner(model)
    rows = runner.step({1: b[:-3]})
    rows += [runner.step({1: [t]})[0] for t in b[-3:]]
    torch.testing.assert_close(torch.cat(rows), alone_b, atol=ATOL, rtol=0)


def test_bf16_runs_close_to_fp32(tiny_llama_dir):
    model = get_model(load_model_config(tiny_llama_dir, dtype="bfloat16"), "cpu")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    prompt = _prompt(model.config.vocab_size, 12, seed=4)
    (logits,) = PagedRunner(model).step({0: prompt})
    assert logits.dtype == torch.float32
    ref = hf_logits(load_hf_model(tiny_llama_dir), prompt)
    torch.testing.assert_close(logits, ref, atol=0.15, rtol=0.05)


def test_load_reports_every_parameter(tiny_llama_dir):
    model = _ours(tiny_llama_dir)
    config = load_model_config(tiny_llama_dir)
    from pagedllm.model_executor.model_loader import iterate_weights

    fresh = type(model)(config)
    assert model.load_weights(iterate_weights(config)) == set(dict(fresh.named_parameters()))
