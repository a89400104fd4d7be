"""FusedMoE: equals the dense mixture (every expert on every token, weighted by the top-k
routing), while running each expert only on the tokens routed to it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.model_executor.layers.moe import ExpertWeightMapper, FusedMoE, select_experts

NUM_EXPERTS, TOP_K, HIDDEN, INTER, TOKENS = 6, 2, 16, 24, 37


def _dense_reference(moe: FusedMoE, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    weights, ids = select_experts(logits, moe.top_k, moe.renormalize)
    dense = torch.zeros(x.shape[0], NUM_EXPERTS)  # [T, E] routing weight, 0 if not picked
    dense.scatter_(1, ids, weights)
    outs = []
    for e in range(NUM_EXPERTS):
        gate, up = F.linear(x, moe.gate_up_proj[e]).chunk(2, dim=-1)
        outs.append(F.linear(F.silu(gate) * up, moe.down_proj[e]))
    return torch.einsum("te,eth->th", dense, torch.stack(outs))


@pytest.mark.parametrize("renormalize", [True, False])
def test_matches_dense_and_runs_only_routed_tokens(renormalize, monkeypatch):
    torch.manual_seed(0)
    moe = FusedMoE(NUM_EXPERTS, TOP_K, HIDDEN, INTER, "silu", renormalize)
    moe.gate_up_proj.data.normal_(0, 0.3)
    moe.down_proj.data.normal_(0, 0.3)
    x, logits = torch.randn(TOKENS, HIDDEN), torch.randn(TOKENS, NUM_EXPERTS)
    rows_run: list[int] = []
    run_expert = moe.quant_method.apply

    def counting_expert(layer: FusedMoE, expert: int, h: torch.Tensor) -> torch.Tensor:
        rows_run.append(h.shape[0])
        return run_expert(layer, expert, h)

    monkeypatch.setattr(moe.quant_method, "apply", counting_expert)

    out = moe(x, logits)

    torch.testing.assert_close(out, _dense_reference(moe, x, logits), atol=1e-5, rtol=0)
    assert sum(rows_run) == TOKENS * TOP_K  # not TOKENS * NUM_EXPERTS


def test_expert_weight_mapper_names():
    mapper = ExpertWeightMapper(4, gate="w1", up="w3", down="w2")
    prefix = "model.layers.0.mlp.experts"
    assert mapper(f"{prefix}.3.w1.weight") == (f"{prefix}.gate_up_proj", (3, "gate"), 8)
    assert mapper(f"{prefix}.3.w3.weight") == (f"{prefix}.gate_up_proj", (3, "up"), 8)
    assert mapper(f"{prefix}.0.w2.weight") == (f"{prefix}.down_proj", (0, "down"), 4)
    assert mapper("model.layers.0.mlp.gate.weight") is None
