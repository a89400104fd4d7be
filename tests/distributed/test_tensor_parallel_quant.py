"""-tp 2 on AWQ and GPTQ (act-order) checkpoints: each shard arrives whole, is decoded and cut to
the rank's part (output rows of column-parallel layers, input rows and their groups of
row-parallel ones), so a rank's codes, scales and zeros are exactly -tp 1's; greedy tokens
equal the same checkpoint's at -tp 1."""

from __future__ import annotations

import pytest

from tests.distributed.test_tensor_parallel import LENGTHS, run_engine
from tests.models.family_check import random_prompts
from tests.quantization.checkpoints import write_awq_checkpoint, write_gptq_checkpoint


@pytest.mark.parametrize("method", ["awq", "gptq_act_order"])
def test_tp2_equals_tp1(tiny_llama_dir, tmp_path, method):
    if method == "awq":
        qdir, _ = write_awq_checkpoint(tiny_llama_dir, str(tmp_path), 32)
    else:
        qdir, _ = write_gptq_checkpoint(tiny_llama_dir, str(tmp_path), 32, act_order=True)
    prompts = random_prompts(LENGTHS, 384)
    assert run_engine(qdir, prompts, tp=2) == run_engine(qdir, prompts, tp=1)


def test_int4_experts_tp2_equals_tp1(tiny_model_factory):
    """--quantization int4 on Mixtral's experts: each rank cuts every expert's intermediate
    slice from the float weights before quantizing it (groups of 32 along in_features fall
    inside a rank's columns), so its codes are -tp 1's."""
    model_dir = tiny_model_factory("MixtralConfig", num_local_experts=4, num_experts_per_tok=2,
                                   hidden_size=128, intermediate_size=128)
    prompts = random_prompts(LENGTHS, 384)
    assert (run_engine(model_dir, prompts, tp=2, quantization="int4")
            == run_engine(model_dir, prompts, tp=1, quantization="int4"))
