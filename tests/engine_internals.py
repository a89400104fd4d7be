"""Reaching into an offline LLM's engine for white-box tests (in-process engine core only)."""

from __future__ import annotations

from torch import nn

from pagedllm import LLM
from pagedllm.engine.core_base import EngineCoreBase


def engine_core(llm: LLM) -> EngineCoreBase:
    return llm.llm_engine.engine_core.engine_core


def loaded_model(llm: LLM) -> nn.Module:
    """The model on the (only) worker."""
    return engine_core(llm).executor.collective_rpc("get_model")[0]
