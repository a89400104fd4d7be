"""A lean GGUF reader: the metadata as plain Python values, the tensors as views of one mmap.

Why not gguf.GGUFReader: it keeps a numpy view per part of every metadata value, ~200 000 small
objects for a 49k-token vocabulary with its merges. For SmolLM2 that is ~200 MiB of resident
memory while loading, and freeing it leaves Python's small-object arenas fragmented (~60 MiB
stayed resident after the model was built). The file format is small enough to read directly;
the block layouts, type sizes and dequantization still come from the `gguf` package.

Format (little-endian): magic "GGUF", version, tensor count, metadata count; metadata as
(key, value type, value); tensor infos as (name, dims, type, offset); the tensor data starts at
the next multiple of general.alignment (32 by default).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> struct format (STRING = 8 and ARRAY = 9 are handled apart).
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                   12: "d"}  # fmt: skip
_STRING, _ARRAY = 8, 9

# Unquantized tensor types -> numpy dtype (all others are blocks of bytes).
_PLAIN_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8,
                 "I16": np.int16, "I32": np.int32, "I64": np.int64}  # fmt: skip


@dataclass
class GGUFTensor:
    """One tensor of the file, with the attributes gguf.ReaderTensor has."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # ggml order: the innermost (contiguous) dimension first
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray  # [rows..., cols] for plain types, [rows..., bytes per row] for block types


class GGUFFile:
    """`fields`: metadata key -> value (str, int, float, bool, or a list of those).
    `tensors`: GGUFTensor list in file order; their data are read-only views of the mapped file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._mmap = np.memmap(path, dtype=np.uint8, mode="r")
        self._buffer = memoryview(self._mmap)
        if bytes(self._buffer[:4]) != _MAGIC:
            raise ValueError(f"{path}: not a GGUF file (magic {bytes(self._buffer[:4])!r})")
        self._offset = len(_MAGIC)
        self.version, num_tensors, num_fields = self._unpack("<IQQ")
        if self.version < 2:
            raise ValueError(f"{path}: GGUF version {self.version} is not supported (2 or 3)")
        self.fields: dict[str, Any] = {}
        for _ in range(num_fields):
            key = self._string()
            (value_type,) = self._unpack("<I")
            self.fields[key] = self._value(value_type)
        infos = [self._tensor_info() for _ in range(num_tensors)]
        alignment = int(self.fields.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = -(-self._offset // alignment) * alignment
        self.tensors = [self._tensor(*info, data_start) for info in infos]
        del self._buffer  # the tensors keep the mmap alive as long as they are used

    def _unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from(fmt, self._buffer, self._offset)
        self._offset += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (length,) = self._unpack("<Q")
        start = self._offset
        self._offset += length
        return str(self._buffer[start : self._offset], "utf-8", errors="replace")

    def _value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self._string()
        if value_type == _ARRAY:
            item_type, count = self._unpack("<IQ")
            if item_type == _STRING:
                return [self._string() for _ in range(count)]
            if item_type == _ARRAY:
                return [self._value(_ARRAY) for _ in range(count)]
            return list(self._unpack(f"<{count}{_SCALAR_FORMATS[item_type]}"))
        if value_type not in _SCALAR_FORMATS:
            raise ValueError(f"{self.path}: unknown GGUF metadata type {value_type}")
        return self._unpack("<" + _SCALAR_FORMATS[value_type])[0]

    def _tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string()
        (num_dims,) = self._unpack("<I")
        dims = self._unpack(f"<{num_dims}Q")
        raw_type, offset = self._unpack("<IQ")
        return name, tuple(int(d) for d in dims), raw_type, offset

    def _tensor(
        self, name: str, dims: tuple[int, ...], raw_type: int, offset: int, data_start: int
    ) -> GGUFTensor:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        tensor_type = GGMLQuantizationType(raw_type)
        block_size, type_size = GGML_QUANT_SIZES[tensor_type]
        n_elements = int(np.prod(dims))
        n_bytes = n_elements * type_size // block_size
        start = data_start + offset
        raw = self._mmap[start : start + n_bytes]
        rows = tuple(reversed(dims[1:]))
        dtype = _PLAIN_DTYPES.get(tensor_type.name)
        if dtype is not None:
            data = raw.view(dtype).reshape(*rows, dims[0])
        else:
            data = raw.reshape(*rows, dims[0] // block_size * type_size)
        return GGUFTensor(name, tensor_type, dims, n_elements, n_bytes, start, data)
