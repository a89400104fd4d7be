"""Reaching into an offline LLM's engine for white-box tests (in-process engine core only)."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedllm import LLM
from pagedllm.engine.core_base import EngineCoreBase
from pagedllm.engine.llm_engine import LLMEngine


def engine_core(llm: LLM) -> EngineCoreBase:
    return llm.llm_engine.engine_core.engine_core


def loaded_model(llm: LLM) -> nn.Module:
    """The model on the (only) worker."""
    return engine_core(llm).executor.collective_rpc("get_model")[0]


def model_runner(llm: LLM) -> Any:
    """The (only) worker's model runner."""
    return engine_core(llm).executor.driver_worker.model_runner


def run_to_completion(engine: LLMEngine) -> tuple[dict[int, list[int]], int]:
    """Step an engine whose requests (ids "0", "1", ...) were added until all finish: each
    request's output tokens by its int id, and the preemptions the steps counted."""
    finished, preemptions = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[int(out.request_id)] = out.outputs[0].token_ids
        preemptions += engine.last_stats.num_preemptions if engine.last_stats else 0
    return finished, preemptions
