"""Resident memory around a long prefill, measured in this process: the fused stack's MLP
workspace stays within its row blocks (fused_cpu_stack.mlp_block_rows), and the heap a step
freed goes back to the OS (utils/heap_trim.py), which glibc would otherwise keep."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.kernels import cpu_kernels_available
from pagedllm.utils.heap_trim import HeapTrimmer
from tests.engine_internals import engine_core

MIB = 2**20


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_high_water() -> None:
    """VmHWM back to the current resident set (Linux 4.0+), or skip."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("/proc/self/clear_refs cannot reset the high-water mark here")


def test_heap_trimmer_returns_the_heap_a_step_freed():
    trimmer = HeapTrimmer(threshold=16 * MIB)
    if not trimmer.enabled:
        pytest.skip("not glibc")
    big = torch.ones(4 * MIB)  # 16 MiB, mmapped; freeing it raises glibc's mmap threshold,
    del big  # as a model load does, so the 2 MiB blocks below come from the heap
    trimmer.trim()
    blocks = [torch.ones(MIB // 2) for _ in range(32)]  # 64 MiB of a step's tensors
    held = trimmer.resident_bytes()
    del blocks[::2]  # half of them freed, each between two live ones: never the heap's top
    kept = trimmer.resident_bytes() - (held - 32 * MIB)
    assert kept >= 24 * MIB, f"glibc returned the freed blocks itself ({kept / MIB:.0f} MiB kept)"
    assert trimmer.after_step()
    assert held - trimmer.resident_bytes() >= 24 * MIB
    assert not trimmer.after_step()  # nothing grew since
    del blocks


@pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")
def test_long_prefill_memory_is_bounded_and_returned(tiny_model_factory):
    """A 1024-token prefill through an 8192-wide MLP: at once, its gate|up and activation rows
    alone would take 96 MiB; in blocks of 432 rows ~40 MiB. After the step the worker trims the
    heap, so the resident set is back near where it started."""
    model = tiny_model_factory("LlamaConfig", intermediate_size=8192, num_hidden_layers=1,
                               max_position_embeddings=2048)  # fmt: skip
    llm = LLM(model, kv_cache_memory="8MiB", max_model_len=1100, max_num_batched_tokens=1024)
    worker = engine_core(llm).executor.driver_worker
    worker.heap.threshold = 8 * MIB
    prompt = {"prompt_token_ids": [5 + i % 90 for i in range(1024)]}
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    llm.generate([prompt], params, use_tqdm=False)  # (first-use allocations out of the way)
    worker.heap.trim()
    before = _status_mib("VmRSS")
    _reset_high_water()
    trims = worker.heap.trims
    llm.generate([{"prompt_token_ids": [6 + i % 80 for i in range(1024)]}], params,
                 use_tqdm=False)  # fmt: skip
    peak, after = _status_mib("VmHWM") - before, _status_mib("VmRSS") - before
    assert worker.execution.name == "fused_cpu_stack"
    assert peak < 72, f"the prefill's resident set rose {peak:.0f} MiB"
    assert worker.heap.trims > trims
    assert after < 16, f"{after:.0f} MiB stayed resident after the step"


@pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")
def test_quantized_prefill_rows_share_one_buffer(tiny_model_factory):
    """int4 weights of a 1B Llama's widths (hidden 2048, qkv 3072, MLP 8192), two layers, a
    2040-token prefill: the quantized qkv and gate_up rows share one step buffer and o's rows
    are dropped before the MLP (decoder_layer.cpp StepBuffers.shared). Measured: 156-195 MiB
    a step; with a new tensor for each per layer (the heap's churn of 24, 16 and 27 MiB
    blocks) the second of two steps rose 221-249 MiB."""
    model = tiny_model_factory("LlamaConfig", hidden_size=2048, intermediate_size=8192,
                               num_attention_heads=32, num_key_value_heads=8,
                               num_hidden_layers=2, max_position_embeddings=2048)  # fmt: skip
    llm = LLM(model, kv_cache_memory="64MiB", max_model_len=2048, max_num_batched_tokens=2048,
              quantization="int4")  # fmt: skip
    worker = engine_core(llm).executor.driver_worker
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    llm.generate([{"prompt_token_ids": [5 + i % 90 for i in range(2040)]}], params,
                 use_tqdm=False)  # (first-use allocations out of the way)
    peaks = []
    for first in (6, 7):  # (the churn's heap grew over steps: 168 MiB, then 221-249)
        worker.heap.trim()
        before = _status_mib("VmRSS")
        _reset_high_water()
        llm.generate([{"prompt_token_ids": [first + i % 80 for i in range(2040)]}], params,
                     use_tqdm=False)  # fmt: skip
        peaks.append(_status_mib("VmHWM") - before)
    assert worker.execution.name == "fused_cpu_stack"
    assert max(peaks) < 210, f"the prefill's resident set rose {max(peaks):.0f} MiB"
