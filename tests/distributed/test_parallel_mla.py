"""Multi-head latent attention (DeepSeek-V2/V3) split over ranks. -tp 2: q_proj / q_b_proj and
kv_b_proj split by heads, o_proj row-parallel; the latent ([c ; k_pe], kv_lora_rank +
qk_rope_head_dim per token) is head-free, so kv_a_proj_with_mqa is replicated and every rank
caches the whole latent. -pp 2: the dense first layer on stage 0, the MoE layer on stage 1.
Greedy tokens equal HF transformers' (fp32); -tp 1 equals HF in tests/models/test_deepseek.py."""

from __future__ import annotations

import pytest

from tests.distributed.test_tensor_parallel import LENGTHS, MAX_TOKENS, run_engine
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts
from tests.models.test_deepseek import VARIANTS


@pytest.mark.parametrize("variant, tp, pp", [("v3", 2, 1), ("v2_lite", 1, 2)])
def test_mla_split_equals_hf(tiny_model_factory, variant, tp, pp):
    config_cls, overrides = VARIANTS[variant]
    model_dir = tiny_model_factory(config_cls, **overrides)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=tp, pipeline_parallel_size=pp) == expected
