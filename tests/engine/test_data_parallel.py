"""Data parallelism offline: LLM(data_parallel_size=2) gives DP=1's greedy tokens, spreads the
requests over both engine-core processes, and routes an abort to the core that holds it."""

from __future__ import annotations

import random
import time

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.engine.dp_client import DPLBClient

pytestmark = pytest.mark.timeout(300)

ENGINE = dict(kv_cache_memory="16MiB", max_num_seqs=16, enforce_eager=False)


@pytest.fixture(scope="module")
def prompts(tiny_vocab) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, tiny_vocab) for _ in range(rng.randrange(5, 40))]
            for _ in range(8)]


@pytest.fixture(scope="module")
def dp_llm(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, data_parallel_size=2, **ENGINE)
    yield llm
    llm.llm_engine.shutdown()


def greedy_tokens(llm: LLM, prompts: list[list[int]], max_tokens: int = 12) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_greedy_tokens_match_one_core_and_use_both(dp_llm, tiny_llama_dir, prompts):
    client = dp_llm.llm_engine.engine_core
    assert isinstance(client, DPLBClient)
    before = [load.routed for load in client.router.loads]
    got = greedy_tokens(dp_llm, prompts)
    routed = [load.routed - b for load, b in zip(client.router.loads, before)]
    assert routed == [4, 4]  # distinct prompts, balanced by load
    expected = greedy_tokens(LLM(tiny_llama_dir, **ENGINE), prompts)
    assert got == expected
    loads = client.router.loads
    assert all(load.waiting == load.running == 0 for load in loads)  # the books are closed


def _held(client: DPLBClient) -> list[int]:
    """Requests each core's scheduler holds (running + waiting), asked of the cores."""
    stats = client.call_utility("get_stats").result(timeout=30)
    return [s.num_running_reqs + s.num_waiting_reqs for s in stats]


def test_abort_reaches_the_core_that_holds_the_request(dp_llm, prompts):
    engine = dp_llm.llm_engine
    client: DPLBClient = engine.engine_core  # type: ignore[assignment]
    params = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    engine.add_request("a", {"prompt_token_ids": prompts[0]}, params)
    engine.add_request("b", {"prompt_token_ids": prompts[1]}, params)
    owner_a, owner_b = client.engine_index_of("a"), client.engine_index_of("b")
    assert owner_a != owner_b
    engine.step()
    engine.abort_request("a")
    held = _held(client)
    assert held[owner_a] == 0 and held[owner_b] == 1, held
    engine.abort_request("b")
    deadline = time.monotonic() + 10
    while _held(client) != [0, 0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not engine.has_unfinished_requests()
