"""GLM and GLM-4 (q/k/v bias, interleaved partial rotary, stored gate_up_proj; GLM-4's sandwich
norms) against HF transformers through the whole engine, on the fused CPU stack."""

from __future__ import annotations

import pytest
import torch

from pagedllm.worker.execution_strategy import EAGER
from tests.engine_internals import engine_core
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

VARIANTS = {"glm": ("GlmConfig", {}), "glm4": ("Glm4Config", {})}


def _model(tiny_model_factory, variant: str) -> str:
    config_cls, overrides = VARIANTS[variant]
    return tiny_model_factory(config_cls, **overrides)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    llm = assert_engine_matches_hf(_model(tiny_model_factory, variant))
    execution = engine_core(llm).executor.driver_worker.execution
    assert execution.name != EAGER, execution.declined


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(_model(tiny_model_factory, variant))


def test_row_reorders_keep_gguf_blocks():
    """take_rows on a Q8_0 GGUF weight (kept in its blocks under --quantization gguf) equals the
    same rows of its dequantized tensor: the interleaved-rotary reorder and the gate/up split
    need no float copy."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from pagedllm.model_executor.model_loader.gguf import GGUFWeight
    from pagedllm.model_executor.models.glm4 import take_rows

    values = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    weight = GGUFWeight(quantize(values, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0,
                        (8, 64))  # fmt: skip
    rows = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])
    taken = take_rows(weight, rows)
    assert taken.shape == (8, 64)
    torch.testing.assert_close(taken.dequantize(), weight.dequantize()[rows], rtol=0, atol=0)
    torch.testing.assert_close(take_rows(weight.dequantize(), rows), weight.dequantize()[rows])
