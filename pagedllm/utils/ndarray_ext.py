"""numpy arrays as a MessagePack extension (dtype, shape, raw bytes), for msgspec encoders: the
process boundaries (executor <-> workers, API server <-> engine core) carry typed MessagePack,
never pickle, and some of their fields are arrays (grammar bitmasks, image pixels)."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

NDARRAY_EXT = 1


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        header = msgspec.msgpack.encode((obj.dtype.str, list(obj.shape)))
        return msgspec.msgpack.Ext(NDARRAY_EXT,
                                   len(header).to_bytes(4, "little") + header + obj.tobytes())
    raise NotImplementedError(f"{type(obj).__name__} cannot cross a process boundary")


def ext_hook(code: int, data: memoryview) -> Any:
    if code != NDARRAY_EXT:
        raise ValueError(f"unknown MessagePack extension {code}")
    raw = bytes(data)  # NOTE: msgspec's memoryview may report a wrong len(); bytes() is exact
    size = int.from_bytes(raw[:4], "little")
    dtype, shape = msgspec.msgpack.decode(raw[4 : 4 + size], type=tuple[str, list[int]])
    if np.dtype(dtype).hasobject:  # object arrays would need pickle: never
        raise ValueError(f"refusing an array of dtype {dtype}")
    return np.frombuffer(raw[4 + size :], dtype=np.dtype(dtype)).reshape(shape).copy()
