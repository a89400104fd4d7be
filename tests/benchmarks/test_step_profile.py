"""StepProfiler: phases add up within the step, "other" is the rest, nothing happens when off,
and the engine's step reports every phase."""

from __future__ import annotations

import time

import pytest

from pagedllm.metrics.step_profile import StepProfiler, profiler_from_env, step_phase


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_phases_and_other():
    profiler = StepProfiler(enabled=True)
    for _ in range(2):
        with profiler.step():
            with profiler.phase("schedule"):
                _busy(0.002)
            with step_phase("forward"):  # through the current profiler, as the runner does
                _busy(0.008)
            with profiler.step():  # nested (LLMEngine.step -> EngineCore.step): one step
                _busy(0.002)
    report = {r.name: r for r in profiler.report()}
    assert profiler.steps == 2
    assert list(report) == ["schedule", "forward", "other"]
    assert sum(r.percent for r in report.values()) == pytest.approx(100.0)
    # Lower bounds are exact (busy waits); upper bounds leave room for a loaded machine.
    assert 8.0 <= report["forward"].ms_per_step < 30.0
    assert 2.0 <= report["schedule"].ms_per_step < 20.0
    assert 2.0 <= report["other"].ms_per_step < 20.0
    assert report["forward"].total_s == pytest.approx(profiler.seconds["forward"])
    assert profiler.overhead_percent() == pytest.approx(100 - report["forward"].percent)
    table = profiler.format_table()
    assert "forward" in table and "(2 steps)" in table
    profiler.reset()
    assert profiler.steps == 0 and profiler.report()[-1].ms_per_step == 0.0


def test_disabled_records_nothing():
    profiler = StepProfiler()
    with profiler.step(), profiler.phase("schedule"), step_phase("forward"):
        pass
    assert profiler.steps == 0 and profiler.seconds == {}
    with step_phase("forward"):  # no current profiler at all: a no-op
        pass


def test_env(monkeypatch):
    monkeypatch.delenv("PAGEDLLM_STEP_PROFILE", raising=False)
    assert not profiler_from_env().enabled
    monkeypatch.setenv("PAGEDLLM_STEP_PROFILE", "0")
    assert not profiler_from_env().enabled
    monkeypatch.setenv("PAGEDLLM_STEP_PROFILE", "50")
    profiler = profiler_from_env()
    assert profiler.enabled and profiler.log_every == 50


def test_engine_step_reports_every_phase(tiny_llama_dir):
    from pagedllm import LLM, SamplingParams

    llm = LLM(tiny_llama_dir, kv_cache_memory="8MiB")
    profiler = llm.llm_engine.step_profiler
    assert not profiler.enabled  # off by default
    llm.generate([[5, 6, 7]], SamplingParams(max_tokens=3), use_tqdm=False)
    assert profiler.steps == 0
    profiler.enabled = True
    llm.generate([[5, 6, 7], [8, 9]], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert profiler.steps == 4  # one prefill step (both prompts) and three decode steps
    names = [r.name for r in profiler.report()]
    assert names == ["schedule", "prepare_inputs", "forward", "sample", "update", "output", "other"]
    assert all(r.total_s > 0 for r in profiler.report()[:-1])
