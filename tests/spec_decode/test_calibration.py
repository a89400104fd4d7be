"""The Drafter's cost per draft token, measured at start-up: the verify work per draft plus, for
a draft model, its own one-token forward, both relative to a one-token decode step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pagedllm import LLM
from pagedllm.config import SpeculativeConfig
from pagedllm.spec_decode.draft_model import DraftModelDrafter
from pagedllm.spec_decode.drafter import DEFAULT_DRAFT_TOKEN_COST, Drafter
from pagedllm.worker.worker import Worker
from tests.engine_internals import engine_core


class _Runner:
    """Forward seconds: 1.0 for one row, + 0.2 per extra row."""

    def __init__(self, drafter):
        self.drafter = drafter

    def measure_forward_seconds(self, num_rows: int) -> float:
        return 1.0 + 0.2 * (num_rows - 1)


def _calibrate(drafter) -> float:
    config = SimpleNamespace(speculative=SimpleNamespace(draft_token_cost=None,
                                                         num_speculative_tokens=4))
    Worker._calibrate_drafts(SimpleNamespace(model_runner=_Runner(drafter), config=config))
    return drafter.cost


def test_verify_cost_per_draft_token():
    assert _calibrate(Drafter(SpeculativeConfig(method="ngram"))) == pytest.approx(0.2)


def test_a_draft_models_forward_adds_to_the_cost():
    drafter = object.__new__(DraftModelDrafter)  # only the measurement is used
    drafter.measure_draft_seconds = lambda: 0.3
    assert _calibrate(drafter) == pytest.approx(0.2 + 0.3)


def test_an_engine_measures_its_cost(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, kv_cache_memory="16MiB", max_model_len=256,
              speculative_config={"method": "ngram", "num_speculative_tokens": 4})
    drafter = engine_core(llm).executor.driver_worker.model_runner.drafter
    # measured, not the default it starts from (no timing is asserted)
    assert 0.01 <= drafter.cost < 100 and drafter.cost != DEFAULT_DRAFT_TOKEN_COST
