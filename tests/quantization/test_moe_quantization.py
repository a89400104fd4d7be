"""int8 / int4 on mixtures of experts: the experts go through the quantization seam (one
quantized kernel per expert, run on the routed tokens only), the routers stay float; the
quantized experts compute exactly their quantized weights, which are within the int8 rounding
bound of the float experts; and whole tiny Mixtral / Qwen2-MoE models agree with their
dequantized references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm import LLM
from pagedllm.kernels import cpu_kernels_available
from pagedllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from pagedllm.model_executor.layers.moe import FusedMoE, UnquantizedFusedMoEMethod, select_experts
from pagedllm.model_executor.model_loader import get_model
from pagedllm.model_executor.model_loader.config import load_model_config
from pagedllm.model_executor.quantization.group_quant import quantize_int8_per_channel
from pagedllm.model_executor.quantization.kernels import QuantizedWeight
from pagedllm.model_executor.quantization.scope import quantization_scope
from pagedllm.model_executor.quantization.weight_only_int8 import Int8Config
from pagedllm.model_executor.quantization.weight_only_moe import WeightOnlyFusedMoEMethod
from tests.models.test_mixtral import MIXTRAL
from tests.models.test_qwen_moe import VARIANTS as QWEN_MOE
from tests.quantization.bounds import INT16_ACT_REL
from tests.quantization.checkpoints import (
    assert_greedy_agrees,
    dequantized_reference_dir,
    engine_logits,
    greedy_with_logprobs,
    random_prompts,
)

FAMILIES = {"mixtral": ("MixtralConfig", MIXTRAL), "qwen2_moe": QWEN_MOE["qwen2_moe"]}
ROUTERS = ("mlp.gate", "mlp.shared_expert_gate")
E, TOP_K, H, INTER, T = 4, 2, 64, 96, 41


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_experts_quantized_routers_float(tiny_model_factory, family, method):
    config_cls, overrides = FAMILIES[family]
    model_dir = tiny_model_factory(config_cls, **overrides)
    model = get_model(load_model_config(model_dir, max_model_len=64, quantization=method), "cpu")
    experts = [m for m in model.modules() if isinstance(m, FusedMoE)]
    assert experts
    for moe in experts:
        assert isinstance(moe.quant_method, WeightOnlyFusedMoEMethod)
        assert not list(moe.parameters()), "no float expert weights are left"
        kernels = [*moe.gate_up_kernels, *moe.down_kernels]
        assert len(kernels) == 2 * moe.num_experts
        for kernel in kernels:
            assert isinstance(kernel, QuantizedWeight)
            assert any(b.dtype in (torch.int8, torch.uint8) for b in kernel.buffers())
    routers = 0
    for name, layer in model.named_modules():
        if not isinstance(layer, LinearBase):
            continue
        if name.endswith(ROUTERS):
            routers += 1
            assert isinstance(layer.quant_method, UnquantizedLinearMethod), name
            assert layer.weight.dtype == torch.float32, name
        else:
            assert hasattr(layer, "qweight_kernel"), name
    assert routers == len(experts) * (2 if family == "qwen2_moe" else 1)


def _moe_pair(seed: int = 0) -> tuple[FusedMoE, FusedMoE, torch.Tensor, torch.Tensor]:
    """A float FusedMoE and an int8 one loaded with the same per-expert checkpoint matrices."""
    torch.manual_seed(seed)
    gate_up, down = torch.randn(E, 2 * INTER, H) * 0.2, torch.randn(E, H, INTER) * 0.2
    dense = FusedMoE(E, TOP_K, H, INTER, "silu", renormalize=True)
    assert isinstance(dense.quant_method, UnquantizedFusedMoEMethod)
    with quantization_scope(Int8Config()):
        quantized = FusedMoE(E, TOP_K, H, INTER, "silu", renormalize=True, prefix="mlp.experts")
    for moe in (dense, quantized):
        for e in range(E):  # per-expert matrices, as Mixtral / Qwen MoE checkpoints store them
            gate, up = gate_up[e].split(INTER)
            moe.gate_up_proj.weight_loader(moe.gate_up_proj, gate, (e, "gate"))
            moe.gate_up_proj.weight_loader(moe.gate_up_proj, up, (e, "up"))
            moe.down_proj.weight_loader(moe.down_proj, down[e], (e, "down"))
        moe.quant_method.process_weights_after_loading(moe)
    return dense, quantized, gate_up, down


def _dequantized_twin(gate_up: torch.Tensor, down: torch.Tensor) -> FusedMoE:
    """The float FusedMoE whose weights are exactly the int8 codes times their scales."""
    twin = FusedMoE(E, TOP_K, H, INTER, "silu", renormalize=True)
    twin.gate_up_proj.data.copy_(torch.stack([quantize_int8_per_channel(w).dequantize()
                                              for w in gate_up]))  # fmt: skip
    twin.down_proj.data.copy_(torch.stack([quantize_int8_per_channel(w).dequantize()
                                           for w in down]))  # fmt: skip
    return twin


def _kernel_rel_bound() -> float:
    """Two matmuls, each within the kernel's relative error (bf16 activations: ~0.4 % each)."""
    return 4 * INT16_ACT_REL if cpu_kernels_available() else 1e-2


@torch.inference_mode()
def test_int8_experts_compute_their_quantized_weights():
    """The quantized method = the float layer on the dequantized weights, up to the kernel's
    activation rounding (int16 per 32 columns in the compiled kernel, bf16 in PyTorch's)."""
    _, quantized, gate_up, down = _moe_pair()
    x, logits = torch.randn(T, H), torch.randn(T, E)
    want = _dequantized_twin(gate_up, down)(x, logits)
    got = quantized(x, logits)
    assert float((got - want).norm() / want.norm()) < _kernel_rel_bound()


def _int8_error_bound(gate_up, down, twin: FusedMoE, x, logits) -> torch.Tensor:
    """|out_int8 - out_float| elementwise bound [T, H] from the rounding alone: a symmetric
    int8 code is within half a step, s_n / 2 = max_k |W[n, k]| / 254, of its weight, so

        |dg|, |du| <= s / 2 * ||x||_1                          (gate, up rows)
        |d(silu(g) u)| <= 1.1 |dg| |u'| + |silu(g)| |du|      (silu is 1.1-Lipschitz)
        |d out| <= |W2'| |d a| + s2 / 2 * ||a||_1

    summed over each token's experts with their routing weights."""
    weights, ids = select_experts(logits, TOP_K, True)
    bound = torch.zeros(T, H)
    x_l1 = x.abs().sum(-1, keepdim=True)  # [T, 1]
    for e in range(E):
        half_step13 = gate_up[e].abs().amax(-1) / 254  # [2I]
        half_step2 = down[e].abs().amax(-1) / 254  # [H]
        g, u = F.linear(x, gate_up[e]).split(INTER, dim=-1)
        g_q, u_q = F.linear(x, twin.gate_up_proj[e]).split(INTER, dim=-1)
        dg, du = (x_l1 * half_step13).split(INTER, dim=-1)  # [T, I]
        d_act = 1.1 * dg * u_q.abs() + F.silu(g).abs() * du
        d_out = F.linear(d_act, twin.down_proj[e].abs()) + (
            (F.silu(g) * u).abs().sum(-1, keepdim=True) * half_step2
        )  # [T, H]
        routed = (weights * (ids == e)).sum(-1, keepdim=True)  # [T, 1], 0 if not routed to e
        bound += routed * d_out
    return bound


@torch.inference_mode()
def test_int8_experts_within_the_rounding_bound_of_float():
    dense, quantized, gate_up, down = _moe_pair(seed=1)
    x, logits = torch.randn(T, H), torch.randn(T, E)
    twin = _dequantized_twin(gate_up, down)
    float_out, int8_out = dense(x, logits), quantized(x, logits)
    bound = _int8_error_bound(gate_up, down, twin, x, logits)
    # the dequantized weights' output is within the bound (exact arithmetic, float32)...
    assert bool(((twin(x, logits) - float_out).abs() <= bound + 1e-5).all())
    # ...and the kernel adds its activation rounding (as bounded above) on top
    kernel_slack = _kernel_rel_bound() * float_out.abs().amax()
    assert bool(((int8_out - float_out).abs() <= bound + kernel_slack).all())
    assert not torch.equal(int8_out, float_out)  # quantized for real


@pytest.mark.parametrize("family, method", [("mixtral", "int8"), ("qwen2_moe", "int4")])
def test_moe_model_matches_dequantized_reference(tiny_model_factory, tmp_path, family, method):
    """Logits and greedy tokens of the quantized model against the float checkpoint holding
    exactly its quantized weights (experts and linears dequantized, routers as they were)."""
    config_cls, overrides = FAMILIES[family]
    model_dir = tiny_model_factory(config_cls, **overrides)
    reference = dequantized_reference_dir(model_dir, method, str(tmp_path))
    prompts = random_prompts([7, 23, 70])
    got = engine_logits(model_dir, prompts, quantization=method)
    want = engine_logits(reference, prompts, quantization=None)
    for g, w in zip(got, want):
        assert float((g - w).norm() / w.norm()) < 1e-2  # bf16 activations in packed kernels
    kwargs = dict(kv_cache_memory="32MiB", max_model_len=128)
    assert_greedy_agrees(
        greedy_with_logprobs(LLM(model_dir, quantization=method, **kwargs), prompts),
        greedy_with_logprobs(LLM(reference, **kwargs), prompts),
    )
