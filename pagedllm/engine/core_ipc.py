"""What crosses between the API process (MPClient) and the engine-core process, as bytes: typed
MessagePack (msgspec) frames on two one-way pipes, never pickle. The API process takes requests
from the network and the core sends back what it computed; neither side unpickles what the other
wrote, so a bug or a compromise on one side cannot run code on the other through the channel.

Each frame is a MessagePack pair [kind, payload]; the kind picks the declared type the payload
decodes into (a payload that does not match its type is an error, not an object of another
class). The pipes are multiprocessing Connections used only through send_bytes/recv_bytes
(length-prefixed frames of raw bytes; their pickling send()/recv() are never called).

    API process ──▶ core   "add" EngineCoreRequest · "abort" / "finish_stopped" [request ids]
                           "utility" [call id, method, args] · "shutdown" nil
    API process ◀── core   "ready" EngineReady · "startup_error" EngineStartupError (first frame)
                           "outputs" EngineCoreOutputs · "utility" [call id, error, result]
                           "heartbeat" core's time.time() (while idle, so a stopped loop shows)
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass
from typing import Any

import msgspec

from pagedllm.config import EngineConfig
from pagedllm.engine.lazy_hf_config import HFConfigFields, read_hf_config
from pagedllm.engine.messages import EngineCoreOutputs, EngineCoreRequest
from pagedllm.metrics.stats import SchedulerStats
from pagedllm.utils.ndarray_ext import enc_hook, ext_hook


class EngineCoreRequestType(enum.Enum):
    ADD = "add"
    """payload: EngineCoreRequest"""
    ABORT = "abort"
    """payload: list of request ids"""
    FINISH_STOPPED = "finish_stopped"
    """payload: list of request ids a stop string ended"""
    UTILITY = "utility"
    """payload: (call_id, method name, args)"""
    SHUTDOWN = "shutdown"
    """payload: None"""


class EngineCoreOutputType(enum.Enum):
    READY = "ready"
    STARTUP_ERROR = "startup_error"
    OUTPUTS = "outputs"
    UTILITY = "utility"
    HEARTBEAT = "heartbeat"


@dataclass
class EngineReady:
    config: EngineConfig
    num_kv_blocks: int
    kv_cache_bytes: int | None
    pid: int
    hf_fields: HFConfigFields | None = None
    """The transformers config's fields the API process reads (lazy_hf_config.py); None: the
    client loads the whole config at once."""


def config_for_the_wire(config: EngineConfig) -> EngineConfig:
    """`config` without its transformers config (an object of a class the wire cannot declare;
    the client loads its own from the same checkpoint: `with_hf_config`)."""
    model = copy.copy(config.model)
    object.__setattr__(model, "hf_config", None)
    config = copy.copy(config)
    object.__setattr__(config, "model", model)
    return config


def with_hf_config(config: EngineConfig, fields: HFConfigFields | None = None) -> EngineConfig:
    """A config from the wire completed with the transformers config of its checkpoint, read in
    this process (the engine core resolved `path`; it is local now). With the `fields` the core
    sent and no vision tower, the config is read only if something asks for another field
    (lazy_hf_config.py: a text model's requests never do, and reading it costs ~65 MiB here)."""
    if fields is not None and not fields.has_vision_tower:
        from pagedllm.engine.lazy_hf_config import LazyHFConfig

        object.__setattr__(config.model, "hf_config", LazyHFConfig(config.model.path, fields))
        return config
    object.__setattr__(config.model, "hf_config", read_hf_config(config.model.path))
    return config


@dataclass
class EngineStartupError:
    message: str
    traceback: str


@dataclass
class UtilityOutput:
    call_id: int
    result: Any = None
    error: str | None = None


@dataclass
class Heartbeat:
    sent_at: float
    """The core's time.time() when it sent it."""


UTILITY_RESULT_TYPES: dict[str, Any] = {
    "get_stats": SchedulerStats,
    "reset_prefix_cache": bool,
    "remove_lora": bool,
}
"""Methods of EngineCoreProc a client may call through UTILITY requests, and what they return
(the client decodes the result against it)."""

UTILITY_METHODS = frozenset(UTILITY_RESULT_TYPES)

_UtilityArg = int | float | str | bool | None

_encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
_frame_decoder = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw])
_INPUT_DECODERS: dict[str, msgspec.msgpack.Decoder] = {
    EngineCoreRequestType.ADD.value: msgspec.msgpack.Decoder(EngineCoreRequest,
                                                             ext_hook=ext_hook),
    EngineCoreRequestType.ABORT.value: msgspec.msgpack.Decoder(list[str]),
    EngineCoreRequestType.FINISH_STOPPED.value: msgspec.msgpack.Decoder(list[str]),
    EngineCoreRequestType.UTILITY.value: msgspec.msgpack.Decoder(
        tuple[int, str, list[_UtilityArg]]),
    EngineCoreRequestType.SHUTDOWN.value: msgspec.msgpack.Decoder(None),
}
_OUTPUT_DECODERS: dict[str, msgspec.msgpack.Decoder] = {
    EngineCoreOutputType.READY.value: msgspec.msgpack.Decoder(EngineReady),
    EngineCoreOutputType.STARTUP_ERROR.value: msgspec.msgpack.Decoder(EngineStartupError),
    EngineCoreOutputType.OUTPUTS.value: msgspec.msgpack.Decoder(EngineCoreOutputs),
    EngineCoreOutputType.UTILITY.value: msgspec.msgpack.Decoder(
        tuple[int, str | None, msgspec.Raw]),
    EngineCoreOutputType.HEARTBEAT.value: msgspec.msgpack.Decoder(float),
}
_result_decoders = {method: msgspec.msgpack.Decoder(result_type | None)
                    for method, result_type in UTILITY_RESULT_TYPES.items()}


class ProtocolError(ValueError):
    """A frame that is not one of the declared messages."""


def _split(data: bytes | memoryview, decoders: dict[str, msgspec.msgpack.Decoder]
           ) -> tuple[str, Any]:
    try:
        kind, raw = _frame_decoder.decode(data)
        decoder = decoders.get(kind)
        if decoder is None:
            raise ProtocolError(f"unknown engine-core message kind {kind!r}")
        return kind, decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ProtocolError(f"malformed engine-core message: {e}") from e


# ---- API process -> core -------------------------------------------------------------------------


def encode_input(kind: EngineCoreRequestType, payload: Any) -> bytes:
    return _encoder.encode((kind.value, payload))


def decode_input(data: bytes | memoryview) -> tuple[EngineCoreRequestType, Any]:
    kind, payload = _split(data, _INPUT_DECODERS)
    if kind == EngineCoreRequestType.UTILITY.value:
        call_id, method, args = payload
        payload = (call_id, method, tuple(args))
    return EngineCoreRequestType(kind), payload


# ---- core -> API process -------------------------------------------------------------------------


def encode_output(message: EngineReady | EngineStartupError | EngineCoreOutputs | UtilityOutput
                  | Heartbeat) -> bytes:
    if isinstance(message, EngineCoreOutputs):
        return _encoder.encode((EngineCoreOutputType.OUTPUTS.value, message))
    if isinstance(message, UtilityOutput):
        return _encoder.encode((EngineCoreOutputType.UTILITY.value,
                                (message.call_id, message.error, message.result)))
    if isinstance(message, Heartbeat):
        return _encoder.encode((EngineCoreOutputType.HEARTBEAT.value, message.sent_at))
    if isinstance(message, EngineReady):
        return _encoder.encode((EngineCoreOutputType.READY.value, message))
    if isinstance(message, EngineStartupError):
        return _encoder.encode((EngineCoreOutputType.STARTUP_ERROR.value, message))
    raise TypeError(f"{type(message).__name__} is not an engine-core output")


def decode_output(data: bytes | memoryview, utility_methods: dict[int, str] | None = None
                  ) -> EngineReady | EngineStartupError | EngineCoreOutputs | UtilityOutput \
        | Heartbeat:
    """One frame from the core. A utility result decodes against its method's declared result
    type, looked up by call id in `utility_methods` (the calls in flight)."""
    kind, payload = _split(data, _OUTPUT_DECODERS)
    if kind == EngineCoreOutputType.HEARTBEAT.value:
        return Heartbeat(payload)
    if kind != EngineCoreOutputType.UTILITY.value:
        return payload
    call_id, error, raw = payload
    method = (utility_methods or {}).get(call_id)
    if error is not None or method is None:  # an unknown call's result is dropped undecoded
        return UtilityOutput(call_id, error=error)
    try:
        return UtilityOutput(call_id, result=_result_decoders[method].decode(raw))
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return UtilityOutput(call_id, error=f"malformed result of {method}: {e}")
