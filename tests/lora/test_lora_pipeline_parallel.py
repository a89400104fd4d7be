"""LoRA under -pp 2: each stage wraps and loads the adapters' tensors of its own layers (the
other stage's are skipped, not refused). Greedy tokens of the base and of two adapters in one
batch, chunked prefill and two micro-batches in flight, equal -tp 1's (test_lora_tensor_parallel
checks -tp 1 against the adapters' effect)."""

from __future__ import annotations

from tests.lora.test_lora_tensor_parallel import _generate
from tests.models.family_check import random_prompts


def test_pp2_with_adapters_equals_pp1(lora_setup):
    base, loras = lora_setup("llama")
    prompts = random_prompts([3, 9, 21, 30], 384, seed=5)
    chosen = [None, loras["all7"], loras["mlp_rslora"], loras["all7"]]
    expected = _generate(base, chosen, prompts, tp=1)
    assert expected[1] != expected[0] and expected[2] != expected[0]  # the adapters matter
    assert _generate(base, chosen, prompts, tp=1, pp=2) == expected
