"""What crosses between an executor and its worker processes, encoded with msgspec (MessagePack
against declared types: no pickle, so nothing that came from the network is ever unpickled).

    executor ──WorkerCall──▶ every rank      (the same bytes to each: a broadcast)
    executor ◀──WorkerReply── the ranks that answer (rank 0 alone for execute_model)

A call's arguments are plain values (str, numbers, bools, lists, dicts) except a step's
scheduler output, which travels as a typed field so it decodes back into the dataclasses the
runner expects. Replies decode against the method's declared result type. numpy arrays (the
grammar bitmask) travel as a MessagePack extension: dtype, shape and raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from pagedllm.core.sched.output import ModelRunnerOutput, PoolingSchedulerOutput, SchedulerOutput
from pagedllm.utils.ndarray_ext import enc_hook as _enc_hook
from pagedllm.utils.ndarray_ext import ext_hook as _ext_hook
from pagedllm.worker.worker import KVCacheInfo


@dataclass
class WorkerCall:
    method: str
    """The Worker method to call."""
    args: list[Any] = field(default_factory=list)
    """Plain positional arguments."""
    step: SchedulerOutput | None = None
    """execute_model's scheduler output (then `args` is empty)."""
    pooling_step: PoolingSchedulerOutput | None = None
    """execute_model's for an encoder-only model."""
    reply_rank: int | None = None
    """The one rank that answers (execute_model: 0); None: every rank answers."""


RESULT_TYPES: dict[str, Any] = {
    "execute_model": ModelRunnerOutput,
    "initialize_cache": KVCacheInfo,
}
"""Methods whose results are dataclasses (decoded into them); others return plain values."""


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_call_decoder = msgspec.msgpack.Decoder(WorkerCall, ext_hook=_ext_hook)
_reply_decoders: dict[str, msgspec.msgpack.Decoder] = {}


def encode_call(call: WorkerCall) -> bytes:
    return _encoder.encode(call)


def decode_call(data: bytes) -> WorkerCall:
    return _call_decoder.decode(data)


def make_call(method: str, args: tuple, reply_rank: int | None) -> WorkerCall:
    """A WorkerCall for `Worker.<method>(*args)`; a scheduler output goes in its typed field."""
    if method == "execute_model":
        (step,) = args
        if isinstance(step, PoolingSchedulerOutput):
            return WorkerCall(method, pooling_step=step, reply_rank=reply_rank)
        return WorkerCall(method, step=step, reply_rank=reply_rank)
    return WorkerCall(method, list(args), reply_rank=reply_rank)


def call_args(call: WorkerCall) -> tuple:
    if call.step is not None:
        return (call.step,)
    if call.pooling_step is not None:
        return (call.pooling_step,)
    return tuple(call.args)


def encode_reply(result: Any = None, error: str | None = None) -> bytes:
    """(error, result): error is None on success."""
    return _encoder.encode((error, result))


def decode_reply(method: str, data: bytes) -> tuple[str | None, Any]:
    decoder = _reply_decoders.get(method)
    if decoder is None:
        result_type = RESULT_TYPES.get(method, Any)
        decoder = msgspec.msgpack.Decoder(tuple[str | None, result_type | None],
                                          ext_hook=_ext_hook)
        _reply_decoders[method] = decoder
    return decoder.decode(data)
