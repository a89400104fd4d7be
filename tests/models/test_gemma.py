"""Gemma, Gemma 2 and Gemma 3 text against HF transformers (tiny random fp32 configs).

Gemma 2/3 use a window of 8 on their sliding layers, so the prompts (up to 40 tokens, + 16
generated) cross it; Gemma 3's local and global layers have different rotary bases. Where the
compiled kernels exist the engine runs the fused CPU decoder stack, and the test says so.
"""

from __future__ import annotations

import pytest

from pagedllm.kernels import cpu_kernels_available
from pagedllm.worker.execution_strategy import EAGER, FUSED_CPU_STACK
from tests.engine_internals import engine_core
from tests.models.family_check import assert_greedy_matches_hf, assert_logits_match_hf

_GEMMA = {"head_dim": 16}
VARIANTS = {
    "gemma": ("GemmaConfig", _GEMMA),
    "gemma2": (
        "Gemma2Config",
        {**_GEMMA, "sliding_window": 8, "query_pre_attn_scalar": 24,
         "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0},
    ),
    "gemma3": (
        "Gemma3TextConfig",
        {**_GEMMA, "num_hidden_layers": 3, "sliding_window": 8, "query_pre_attn_scalar": 24,
         "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
         "rope_parameters": {
             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
             "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0},
         }},
    ),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_hf(tiny_model_factory, variant):
    config_cls, overrides = VARIANTS[variant]
    llm = assert_greedy_matches_hf(tiny_model_factory(config_cls, **overrides))
    execution = engine_core(llm).executor.driver_worker.execution
    assert execution.name == (FUSED_CPU_STACK if cpu_kernels_available() else EAGER), execution


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    config_cls, overrides = VARIANTS[variant]
    assert_logits_match_hf(tiny_model_factory(config_cls, **overrides))
