"""The attention selector: chosen once from the platform and the model, refusals explained."""

from __future__ import annotations

import pytest
import torch

from pagedllm.attention.backends.torch_sdpa import TorchSdpaBackend
from pagedllm.attention.selector import AttentionRequirements, select_attn_backend
from pagedllm.kernels import cpu_kernels_available

needs_kernels = pytest.mark.skipif(not cpu_kernels_available(), reason="kernels not built")


def _needs(device="cpu", dtype=torch.float32, kv=None, heads=(64,)) -> AttentionRequirements:
    return AttentionRequirements(device, dtype, kv or dtype, frozenset(heads))


@needs_kernels
@pytest.mark.parametrize("kv", [torch.float32, torch.float16, torch.int8, torch.float8_e4m3fn])
def test_cpu_float32_models_get_the_compiled_kernel(kv):
    choice = select_attn_backend(None, _needs(kv=kv))
    assert choice.backend.name == "cpu_paged" and choice.declined == {}
    # the start-up line says how the cache is read (int8 in the kernel, fp8 through a copy)
    path = {torch.int8: "int8 KV cache read in place", torch.float8_e4m3fn: "gathered",
            torch.float16: "float16 KV cache read in place", torch.float32: None}[kv]  # fmt: skip
    described = choice.describe(kv)
    assert (path in described) if path else described == "cpu_paged"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_models_on_cpu_fall_back_with_the_reason(dtype):
    choice = select_attn_backend(None, _needs(dtype=dtype))
    assert choice.backend.name == "torch_sdpa"
    assert any(f"model dtype {str(dtype)[6:]} not supported" in r
               for r in choice.declined["cpu_paged"])  # fmt: skip
    assert "cpu_paged: model dtype" in choice.describe()


def test_other_devices_get_torch_sdpa():
    assert select_attn_backend(None, _needs(device="cuda")).backend.name == "torch_sdpa"


def test_a_named_backend_that_cannot_serve_the_model_is_refused():
    with pytest.raises(ValueError, match="'cpu_paged' cannot serve this model: .*bfloat16"):
        select_attn_backend("cpu_paged", _needs(dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="device cuda not supported"):
        select_attn_backend("cpu_paged", _needs(device="cuda"))


def test_head_sizes_are_checked():
    class EvenHeadsOnly(TorchSdpaBackend):
        @classmethod
        def supports_head_size(cls, head_size: int) -> bool:
            return head_size % 2 == 0

    assert EvenHeadsOnly.validate_configuration("cpu", torch.float32, torch.float32, {64}) == []
    reasons = EvenHeadsOnly.validate_configuration("cpu", torch.float32, torch.float32, {64, 7})
    assert reasons == ["head size 7 not supported"]
