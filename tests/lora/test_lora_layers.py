"""LoRALinear on its own (exact arithmetic per slot, base tokens untouched) and over a
quantized base (QLoRA-style: an int4 base with a float adapter)."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, LoRARequest
from pagedllm.forward_context import set_forward_context
from pagedllm.lora.layers import LoRALinear, LoRAMapping
from pagedllm.model_executor.layers.linear import MergedColumnParallelLinear
from tests.engine_internals import loaded_model
from tests.lora.adapters import make_adapter
from tests.quantization.checkpoints import (
    assert_greedy_agrees,
    dequantized_reference_dir,
    random_prompts,
)


@pytest.mark.parametrize("compiled", [True, False])
def test_each_token_gets_its_slots_update(compiled):
    """The compiled kernel (lora.cpp) and the grouped ATen path both give each token its own
    slot's update, in every output slice; base tokens keep the base layer's exact bits."""
    from pagedllm.kernels import cpu_kernels_available

    if compiled and not cpu_kernels_available():
        pytest.skip("no compiled CPU kernels")
    torch.manual_seed(0)
    base = MergedColumnParallelLinear(20, [9, 13])  # (widths with vector tails)
    base.weight.data.normal_()
    layer = LoRALinear(base, max_loras=3, max_rank=4, dtype=torch.float32,
                       device=torch.device("cpu"))
    layer.compiled = compiled
    updates = {}  # (slot, slice) -> (a, b)
    for slot, rank in [(0, 4), (2, 2)]:
        layer.clear_slot(slot)
        for index, out in enumerate([9, 13]):
            a, b = torch.randn(rank, 20), torch.randn(out, rank)
            layer.set_slot(slot, index, a, b)
            updates[(slot, index)] = (a, b)
    x = torch.randn(6, 20)
    slots = torch.tensor([0, 3, 2, 2, 3, 0])  # 3: the base model
    with set_forward_context(None, LoRAMapping.from_token_slots(slots.numpy(), num_slots=3)):
        y = layer(x)
    plain = base(x)
    for t, slot in enumerate(slots.tolist()):
        if slot == 3:
            assert torch.equal(y[t], plain[t])
            continue
        delta = torch.cat([x[t] @ updates[(slot, i)][0].T @ updates[(slot, i)][1].T
                           for i in range(2)])
        torch.testing.assert_close(y[t], plain[t] + delta, atol=1e-5, rtol=1e-5)
    assert torch.equal(layer(x), plain)  # no forward context: the base layer


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_adapter_over_quantized_base(method, tiny_llama_dir, tmp_path):
    """The quantized base keeps its integer weights and runs as before; with an adapter its
    tokens agree with the float model of the same (dequantized) weights under that adapter."""
    adapter = make_adapter(tiny_llama_dir, str(tmp_path / "a"), seed=1, rank=8)
    lora = LoRARequest("a", 1, adapter)
    reference = dequantized_reference_dir(tiny_llama_dir, method, str(tmp_path))
    prompts = random_prompts([7, 23, 40])
    kwargs = dict(kv_cache_memory="32MiB", max_model_len=128, enable_lora=True)
    quantized = LLM(tiny_llama_dir, quantization=method, **kwargs)
    model = loaded_model(quantized)
    assert any(t.dtype == torch.int8 for t in [*model.parameters(), *model.buffers()])
    got = _greedy(quantized, prompts, lora)
    want = _greedy(LLM(reference, **kwargs), prompts, lora)
    assert_greedy_agrees(got, want)
    assert [g.token_ids for g in got] != [g.token_ids for g in _greedy(quantized, prompts, None)]


def _greedy(llm: LLM, prompts, lora):
    from pagedllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=2)
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
    return [o.outputs[0] for o in outputs]
