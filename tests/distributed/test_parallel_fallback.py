"""The Transformers fallback under -tp 2, split by transformers' own base_model_tp_plan
(colwise q/k/v and gate/up, rowwise o/down all-reduced; embeddings, norms and LM head
replicated): OLMo (1), which has no native implementation, greedy equal to HF transformers'
(fp32); -tp 1 equals HF in tests/models/test_transformers_fallback.py. A plan with a style the
fallback does not split is refused by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.distributed.test_tensor_parallel import LENGTHS, MAX_TOKENS, run_engine
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts


def test_olmo_tp2_equals_hf(tiny_model_factory):
    model_dir = tiny_model_factory("OlmoConfig", clip_qkv=8.0)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=2) == expected


def test_plan_styles_not_split_are_refused(monkeypatch):
    from pagedllm.model_executor.models import transformers_tp

    monkeypatch.setattr(transformers_tp, "get_tensor_model_parallel_world_size", lambda: 2)
    model = nn.Module()
    model.base_model = nn.Module()
    config = type("C", (), {"base_model_tp_plan": {"layers.*.mlp.experts": "packed_colwise"}})
    with pytest.raises(ValueError, match="does not split .*packed_colwise"):
        transformers_tp.shard_by_tp_plan(model, config, "XForCausalLM")
    with pytest.raises(ValueError, match="has no base_model_tp_plan"):
        transformers_tp.shard_by_tp_plan(model, type("C", (), {}), "XForCausalLM")


def test_planned_linear_slices_sum_to_the_whole():
    """Two ranks' colwise outputs concatenate, and rowwise partials sum, to the whole layer."""
    from pagedllm.model_executor.models.transformers_tp import PlannedLinear

    torch.manual_seed(0)
    whole = nn.Linear(8, 6)
    x = torch.randn(3, 8)
    cols, partials = [], []
    for rank in range(2):
        col = PlannedLinear(whole, "colwise", 2, rank)
        col._load(col.weight, whole.weight.data)
        col._load(col.bias, whole.bias.data)
        cols.append(col(x))
        row = PlannedLinear(whole, "rowwise", 2, rank)
        row._load(row.weight, whole.weight.data)
        partials.append(torch.nn.functional.linear(x[:, rank * 4:(rank + 1) * 4], row.weight))
    torch.testing.assert_close(torch.cat(cols, dim=-1), whole(x))
    torch.testing.assert_close(sum(partials) + whole.bias, whole(x))
