"""The fused stack's section timer (kernels/csrc/section_timer.h) and the offline-workload
profiler built on it (benchmarks/profile_offline_steps.py): timing leaves the tokens alone, every
section of a Llama layer is timed, and the profile's steps and parts add up to the run."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.datasets import SampleRequest
from pagedllm.kernels import cpu_kernels_available

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = [[5 + (7 * i + 3 * j) % 90 for j in range(n)] for i, n in enumerate([3, 20, 9])]
OUTPUT_LEN = 5


def _load_profiler():
    path = os.path.join(ROOT, "benchmarks", "profile_offline_steps.py")
    spec = importlib.util.spec_from_file_location("profile_offline_steps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Runner:
    """EngineRunner's part the profiler uses, over an LLM built here."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    def describe(self) -> dict:
        return {"model": "tiny"}


@pytest.fixture(scope="module")
def llm(tiny_model_factory):
    return LLM(tiny_model_factory("LlamaConfig"), kv_cache_memory="16MiB", max_model_len=64,
               max_num_batched_tokens=16, enable_prefix_caching=False)  # fmt: skip


def _greedy(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.mark.parametrize("clock", [1, 2])  # wall, the thread's CPU time
def test_section_timer_times_every_section_and_changes_no_token(llm, clock):
    plain = _greedy(llm)
    torch.ops.pagedllm.set_stack_section_timing(clock)
    try:
        timed = _greedy(llm)
        seconds = torch.ops.pagedllm.stack_section_seconds()
    finally:
        torch.ops.pagedllm.set_stack_section_timing(0)
    assert timed == plain
    module = _load_profiler()
    assert len(seconds) == len(module.SECTIONS)
    assert all(s > 0 for s in seconds), dict(zip(module.SECTIONS, seconds))
    # off: the sums stand still
    _greedy(llm)
    assert torch.ops.pagedllm.stack_section_seconds() == seconds
    with pytest.raises(RuntimeError, match="clock 0, 1 or 2"):
        torch.ops.pagedllm.set_stack_section_timing(3)


def test_profile_splits_the_run_into_prefill_and_decode(llm):
    plain = _greedy(llm)
    module = _load_profiler()
    requests = [SampleRequest(prompt_token_ids=p, output_len=OUTPUT_LEN) for p in PROMPTS]
    record = module.profile(_Runner(llm), requests, clock="cpu")
    assert record["token_ids"] == plain  # the instrumented run makes the same tokens
    assert record["output_tokens"] == len(PROMPTS) * OUTPUT_LEN
    kinds = record["by_kind"]
    assert set(kinds) == {"prefill", "decode"}
    # every prompt token and every fed-back token is scheduled once; a decode step has one
    # token per row
    prompt_tokens = sum(len(p) for p in PROMPTS)
    assert kinds["decode"]["tokens"] == kinds["decode"]["rows"]
    assert kinds["prefill"]["tokens"] + kinds["decode"]["tokens"] == (
        prompt_tokens + len(PROMPTS) * (OUTPUT_LEN - 1))
    for kind in kinds.values():
        parts = kind["parts_s"]
        assert parts["stack.attention"] > 0 and parts["stack.gate_up"] > 0
        assert parts["lm_head"] > 0
        assert sum(parts.values()) == pytest.approx(kind["seconds"], rel=1e-6)
    # the instrumentation is undone: the scheduler and the model are the engine's again
    core = llm.llm_engine.engine_core.engine_core
    runner = core.executor.driver_worker.model_runner
    assert "schedule" not in vars(core.scheduler)
    assert "compute_logits" not in vars(runner.model) and "forward" not in vars(runner.sampler)
    assert _greedy(llm) == plain


def test_format_record_names_every_part(llm):
    module = _load_profiler()
    requests = [SampleRequest(prompt_token_ids=p, output_len=OUTPUT_LEN) for p in PROMPTS[:1]]
    record = module.profile(_Runner(llm), requests)
    record["load_avg"] = [0.0, 0.0, 0.0]
    text = module.format_record(record)
    for name in module.SECTIONS:
        assert f"stack.{name}" in text
