"""-dp 2 with restart_cores (the server's --restart-engine-on-failure): a core killed with
SIGKILL fails only its own requests, the engine keeps serving on the other core meanwhile, and
the dead core is restarted in the background and routed to again (requests on both cores
finish afterwards)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pagedllm import SamplingParams
from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.dp_client import DPLBClient, EngineCoreDied
from pagedllm.engine.messages import EngineCoreRequest

pytestmark = pytest.mark.timeout(300)

RESTART_SECONDS = 120.0
"""Generous: a restart loads the model in a new process on a loaded 2-core machine."""


def _request(request_id: str, max_tokens: int) -> EngineCoreRequest:
    return EngineCoreRequest(request_id, [5, 6, 7, 8], SamplingParams(
        temperature=0.0, max_tokens=max_tokens, ignore_eos=True))


def _finish(client: DPLBClient, request_ids: set[str]) -> dict[str, int]:
    """Read outputs until every request finished; the core that finished each."""
    finished: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while set(finished) != request_ids:
        assert time.monotonic() < deadline, finished
        outputs = client.get_output()
        finished.update({o.request_id: outputs.engine_index for o in outputs.outputs
                         if o.finish_reason is not None})
    return finished


def test_dead_core_is_restarted_while_the_other_serves(tiny_llama_dir):
    client = DPLBClient(EngineArgs(model=tiny_llama_dir, data_parallel_size=2,
                                   kv_cache_memory="16MiB"), restart_cores=True)
    try:
        client.add_request(_request("a", 4000))
        client.add_request(_request("b", 4000))
        assert client.engine_index_of("a") != client.engine_index_of("b")
        victim = client.engine_index_of("b")
        old_pid = client.pids[victim]
        os.kill(old_pid, signal.SIGKILL)
        with pytest.raises(EngineCoreDied) as died:
            while True:
                client.get_output()
        assert died.value.engine_index == victim and died.value.request_ids == ["b"]
        assert client.is_alive()  # the other core serves while this one restarts
        client.add_request(_request("c", 4))  # routed to the live core
        assert client.engine_index_of("c") != victim
        client.abort_requests(["a"])
        _finish(client, {"c"})
        deadline = time.monotonic() + RESTART_SECONDS
        while client.num_restarts[victim] == 0:
            assert time.monotonic() < deadline, "the dead core was not restarted"
            time.sleep(0.5)
        assert client.pids[victim] != old_pid and client.is_alive()
        client.add_request(_request("d", 4))
        client.add_request(_request("e", 4))
        assert _finish(client, {"d", "e"}) in ({"d": 0, "e": 1}, {"d": 1, "e": 0})
    finally:
        client.shutdown()
