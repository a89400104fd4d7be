"""-tp 2 for the families whose q/k norms needed splitting: StableLM and Cohere (a LayerNorm per
head: each rank holds its heads' rows) and OLMo 2 (an RMSNorm over all heads: the sum of squares
is all-reduced). Greedy tokens equal HF transformers' (fp32) for mixed prompt lengths with the
prefill chunked by a 16-token budget; -tp 1 equals HF in tests/models."""

from __future__ import annotations

import pytest

from tests.distributed.test_tensor_parallel import LENGTHS, MAX_TOKENS, run_engine
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models import test_cohere, test_stablelm
from tests.models.family_check import random_prompts

FAMILIES = {
    # per-head q/k LayerNorm (rows per checkpoint head), parallel residual, partial rotary
    "stablelm": ("StableLmConfig", {**test_stablelm.VARIANTS["parallel_qk_norm"],
                                    "num_key_value_heads": 2}),
    # per-head q/k LayerNorm (one weight tensor), interleaved rotary reordered at load
    "cohere": ("CohereConfig", {**test_cohere.VARIANTS["qk_norm_bias"],
                                "num_key_value_heads": 2}),
    # q/k RMSNorm over all heads: the squares are all-reduced over the ranks
    "olmo2": ("Olmo2Config", {"num_key_value_heads": 2}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tp2_equals_hf(tiny_model_factory, family):
    config_cls, overrides = FAMILIES[family]
    model_dir = tiny_model_factory(config_cls, **overrides)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=2) == expected
