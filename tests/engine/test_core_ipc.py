"""The API process <-> engine-core channel carries typed MessagePack, never pickle.

Frames round-trip every kind of payload the server sends (images, LoRA, pooling, logprobs,
stats); a frame that is not a declared message (a pickle, a wrong type) is refused. Then a real
engine core runs with pickle.loads (and multiprocessing's unpickler) raising in its process and in
this one after start-up: it still serves a request with logprobs, an abort and a stats call."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pagedllm.core.sched.output import LogprobsLists
from pagedllm.engine.core_ipc import (
    EngineCoreRequestType,
    EngineStartupError,
    Heartbeat,
    ProtocolError,
    UtilityOutput,
    decode_input,
    decode_output,
    encode_input,
    encode_output,
)
from pagedllm.engine.messages import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest
from pagedllm.lora.request import LoRARequest
from pagedllm.metrics.stats import SchedulerStats
from pagedllm.multimodal.inputs import MultiModalFeature
from pagedllm.pooling_params import PoolingParams
from pagedllm.request import FinishReason
from pagedllm.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(120)


def test_request_round_trips_with_image_lora_and_pooling():
    params = SamplingParams(max_tokens=7, logprobs=3, stop=["x"], seed=5,
                            logit_bias={3: -1.5}, stop_token_ids=[9])
    params._bad_words_token_ids = [[4, 5]]
    pixels = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    request = EngineCoreRequest(
        "r1", [1, 2, 3], params, priority=-2, cache_salt="s",
        lora_request=LoRARequest("ad", 1, "/tmp/ad"), pooling_params=PoolingParams(dimensions=4),
        token_type_ids=[0, 0, 1],
        mm_features=[MultiModalFeature("image", "h", 1, 2, pixels)])
    kind, decoded = decode_input(encode_input(EngineCoreRequestType.ADD, request))
    assert kind is EngineCoreRequestType.ADD
    got_pixels = decoded.mm_features[0].pixel_values
    assert got_pixels.dtype == np.float32 and np.array_equal(got_pixels, pixels)
    decoded.mm_features[0].pixel_values = request.mm_features[0].pixel_values = None
    assert decoded == request
    assert decoded.sampling_params.all_stop_token_ids == {9}
    assert decoded.sampling_params._bad_words_token_ids == [[4, 5]]


def test_outputs_and_utility_results_round_trip():
    logprobs = LogprobsLists([[5, 5, 6]], [[-0.1, -0.1, -2.5]], [1], start_position=3)
    outputs = EngineCoreOutputs(
        [EngineCoreOutput("a", [5], new_logprobs=logprobs, finish_reason=FinishReason.LENGTH,
                          stop_reason="\n", num_cached_tokens=16),
         EngineCoreOutput("b", [], pooling_output=[0.25, -1.0])],
        scheduler_stats=SchedulerStats(num_running_reqs=2, kv_cache_usage=0.5))
    assert decode_output(encode_output(outputs)) == outputs
    stats = SchedulerStats(num_waiting_reqs=3)
    frame = encode_output(UtilityOutput(7, result=stats))
    assert decode_output(frame, {7: "get_stats"}) == UtilityOutput(7, result=stats)
    # a result decodes against its method's type: a dict where a bool belongs is an error
    bad = decode_output(encode_output(UtilityOutput(8, result={"x": 1})), {8: "remove_lora"})
    assert bad.result is None and "malformed result of remove_lora" in bad.error
    assert isinstance(decode_output(encode_output(Heartbeat(1.5))), Heartbeat)
    error = EngineStartupError("no model", "tb")
    assert decode_output(encode_output(error)) == error
    kind, payload = decode_input(encode_input(EngineCoreRequestType.UTILITY, (1, "get_stats", ())))
    assert (kind, payload) == (EngineCoreRequestType.UTILITY, (1, "get_stats", ()))


class _Evil:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pwned')",))


@pytest.mark.parametrize("frame", [
    pickle.dumps(("add", _Evil())),
    pickle.dumps(_Evil()),
    encode_input(EngineCoreRequestType.ABORT, [1, 2]),  # ints where ids (str) belong
    b"\x92\xa3add\xc0",  # ["add", nil]
    b"\x92\xa4nope\x90",  # an unknown kind
    b"",
], ids=["pickled-add", "pickle", "wrong-type", "nil-request", "unknown-kind", "empty"])
def test_undeclared_frames_are_refused(frame):
    with pytest.raises(ProtocolError):
        decode_input(frame)


def test_core_outputs_that_are_not_messages_are_refused():
    with pytest.raises(ProtocolError):
        decode_output(pickle.dumps(EngineCoreOutputs()))
    with pytest.raises(ProtocolError):
        decode_output(encode_input(EngineCoreRequestType.ABORT, ["a"]))  # an input kind


# ---- a real engine core that cannot unpickle ---------------------------------------------------


def _forbid_pickle() -> None:
    import multiprocessing.reduction

    def refuse(*args, **kwargs):
        raise AssertionError("pickle.loads called on the engine-core channel")

    pickle.loads = refuse
    multiprocessing.reduction.ForkingPickler.loads = refuse  # Connection.recv, Queue.get


def _core_without_pickle(engine_args, input_conn, output_conn) -> None:
    """The engine-core entry point, with unpickling made to fail first (the spawn bootstrap that
    brought these arguments is over; from here on only the channel delivers data)."""
    from pagedllm.engine.core_proc import run_engine_core

    _forbid_pickle()
    run_engine_core(engine_args, input_conn, output_conn)


def _collect(client, wanted: set[str]) -> dict[str, list[EngineCoreOutput]]:
    seen: dict[str, list[EngineCoreOutput]] = {}
    done: set[str] = set()
    while not wanted <= done:
        for out in client.get_output().outputs:
            seen.setdefault(out.request_id, []).append(out)
            if out.finished:
                done.add(out.request_id)
    return seen


@pytest.fixture(scope="module")
def core(tiny_llama_dir):
    """A real engine core (tiny Llama, two sequences a step) that cannot unpickle."""
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.engine.core_client import MPClient

    args = EngineArgs(model=tiny_llama_dir, kv_cache_memory="8MiB", num_threads=1,
                      max_num_seqs=2)
    client = MPClient(args, startup_timeout=120, target=_core_without_pickle)
    yield client
    client.shutdown(timeout=30)  # a loaded machine takes its time over torch's teardown
    assert client._proc.exitcode == 0  # a clean exit: no AssertionError from the refusal


@pytest.fixture
def no_pickle_here(monkeypatch):
    """This side reads no pickle either."""
    import multiprocessing.reduction

    monkeypatch.setattr(pickle, "loads", _Evil)
    monkeypatch.setattr(multiprocessing.reduction.ForkingPickler, "loads", _Evil)


def test_engine_core_serves_with_pickle_forbidden(core, no_pickle_here):
    greedy = SamplingParams(temperature=0, max_tokens=4, logprobs=2, ignore_eos=True)
    core.add_request(EngineCoreRequest("a", [5, 6, 7, 8], greedy))
    core.add_request(EngineCoreRequest(
        "b", [9, 10], SamplingParams(max_tokens=10_000, ignore_eos=True)))
    first = _collect(core, {"a"})
    tokens = [t for out in first["a"] for t in out.new_token_ids]
    assert len(tokens) == 4
    rows = [row for out in first["a"] for row in out.new_logprobs.token_ids]
    assert [row[0] for row in rows] == tokens and all(len(row) == 3 for row in rows)
    core.abort_requests(["b"])
    stats = core.call_utility("get_stats")
    while not stats.done():
        core.get_output()
    result = stats.result()
    assert isinstance(result, SchedulerStats)
    assert result.num_running_reqs == result.num_waiting_reqs == 0  # b is gone
    assert core.is_alive()


def test_a_flooding_tenant_leaves_the_other_a_slot(core, no_pickle_here):
    """The tenant crosses the channel and the real scheduler shares the two slots by it: once
    the flood's first two finish, the calm key's request runs before the flood's fourth."""
    def request(request_id: str, tenant: str, max_tokens: int) -> EngineCoreRequest:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        return EngineCoreRequest(request_id, [5, 6, 7], params, tenant=tenant)

    for number, max_tokens in enumerate((150, 150, 4, 4)):
        core.add_request(request(f"flood{number}", "flood", max_tokens))
    started: list[str] = []
    while len(started) < 2:  # flood0 and flood1 hold both slots, flood2 and 3 wait
        started += [o.request_id for o in core.get_output().outputs if o.request_id not in started]
    core.add_request(request("calm", "calm", 4))
    done: set[str] = set()
    while len(done) < 5:
        for out in core.get_output().outputs:
            if out.request_id not in started:
                started.append(out.request_id)
            if out.finished:
                done.add(out.request_id)
    assert started[:2] == ["flood0", "flood1"]
    assert started.index("calm") < started.index("flood3"), started


def test_the_client_reads_no_transformers_config_of_a_text_model(core, tiny_llama_dir):
    """The core sends the fields the API process reads (EngineReady.hf_fields): the client's
    config answers them without building a transformers config (~65 MiB of imports)."""
    from transformers import AutoConfig

    from pagedllm.engine.lazy_hf_config import API_FIELDS, LazyHFConfig

    hf_config = core.config.model.hf_config
    assert isinstance(hf_config, LazyHFConfig) and not hf_config.loaded
    real = AutoConfig.from_pretrained(tiny_llama_dir)
    missing = object()
    for name in API_FIELDS:
        assert getattr(hf_config, name, missing) == getattr(real, name, missing), name
    assert not hf_config.loaded
