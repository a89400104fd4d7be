"""A lean GGUF reader: the metadata as plain Python values, the tensors as views of one mmap.

Why not gguf.GGUFReader: it keeps a numpy view per part of every metadata value, ~200 000 small
objects for a 49k-token vocabulary with its merges. For SmolLM2 that is ~200 MiB of resident
memory while loading, and freeing it leaves Python's small-object arenas fragmented (~60 MiB
stayed resident after the model was built). The file format is small enough to read directly;
the block layouts, type sizes and dequantization still come from the `gguf` package.

Format (little-endian): magic "GGUF", version, tensor count, metadata count; metadata as
(key, value type, value); tensor infos as (name, dims, type, offset); the tensor data starts at
the next multiple of general.alignment (32 by default).

The file is untrusted input: every count, length, size and offset is checked against the bytes
the file has before it is used, so a truncated or corrupted file (or one made to attack the
loader) raises GGUFFormatError naming what is wrong and where, in time proportional to the
file's size; never a crash, a hang or a huge allocation.
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
_LENGTH = struct.Struct("<Q")
_MAX_DIMS = 4
"""ggml's GGML_MAX_DIMS."""
_MAX_ARRAY_NESTING = 8
_MAX_ALIGNMENT = 1 << 20


class GGUFFormatError(ValueError):
    """The file is not a well-formed GGUF file (truncated, corrupted, or sizes that do not fit)."""

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
        try:
            self._mmap = np.memmap(path, dtype=np.uint8, mode="r")
        except ValueError as e:  # numpy cannot map an empty file
            raise GGUFFormatError(f"{path}: not a GGUF file ({e})") from e
        self._buffer = memoryview(self._mmap)
        self._size = len(self._buffer)
        if bytes(self._buffer[:4]) != _MAGIC:
            raise GGUFFormatError(f"{path}: not a GGUF file (magic {bytes(self._buffer[:4])!r})")
        self._offset = len(_MAGIC)
        self.version, num_tensors, num_fields = self._unpack("<IQQ")
        if self.version not in (2, 3):
            raise GGUFFormatError(
                f"{path}: GGUF version {self.version} is not supported (2 or 3)")
        # the smallest field is a key length, a type and a 1-byte value; a tensor info 24 bytes
        self._check_count(num_fields, 13, "metadata entries")
        self._check_count(num_tensors, 24, "tensors")
        self.fields: dict[str, Any] = {}
        for _ in range(num_fields):
            key = self._string()
            (value_type,) = self._unpack("<I")
            self.fields[key] = self._value(value_type, key)
        infos = [self._tensor_info() for _ in range(num_tensors)]
        alignment = self.fields.get("general.alignment", _DEFAULT_ALIGNMENT)
        if (isinstance(alignment, bool) or not isinstance(alignment, int)
                or not 1 <= alignment <= _MAX_ALIGNMENT):
            raise GGUFFormatError(f"{path}: bad general.alignment {alignment!r}")
        data_start = -(-self._offset // alignment) * alignment
        self.tensors = [self._tensor(*info, data_start) for info in infos]
        del self._buffer  # the tensors keep the mmap alive as long as they are used

    def _fail(self, what: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: corrupt GGUF file: {what} (at byte {self._offset} "
                               f"of {self._size})")

    def _check_count(self, count: int, min_item_bytes: int, what: str) -> None:
        """A count the rest of the file cannot hold is corrupt (and must not drive a loop)."""
        if count * min_item_bytes > self._size - self._offset:
            raise self._fail(f"{count} {what} cannot fit in the file")

    def _unpack(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self._offset + size > self._size:
            raise self._fail(f"truncated: {size} more bytes needed")
        values = struct.unpack_from(fmt, self._buffer, self._offset)
        self._offset += size
        return values

    def _string(self) -> str:
        (length,) = self._unpack("<Q")
        if length > self._size - self._offset:
            raise self._fail(f"a string of {length} bytes runs past the end")
        start = self._offset
        self._offset += length
        return str(self._buffer[start : self._offset], "utf-8", errors="replace")

    def _strings(self, count: int, key: str) -> list[str]:
        """`count` strings in a row: _string inlined (a vocabulary is 262k of them for Gemma 3;
        ~3x faster than calling it per string)."""
        buffer, offset, size = self._buffer, self._offset, self._size
        length_at = _LENGTH.unpack_from
        strings = []
        append = strings.append
        for _ in range(count):
            if offset + 8 > size:
                self._offset = offset
                raise self._fail(f"{key}: truncated: 8 more bytes needed")
            start = offset + 8
            offset = start + length_at(buffer, offset)[0]
            if offset > size:
                self._offset = start
                raise self._fail(f"{key}: a string of {offset - start} bytes runs past the end")
            append(str(buffer[start:offset], "utf-8", errors="replace"))
        self._offset = offset
        return strings

    def _value(self, value_type: int, key: str, depth: int = 0) -> Any:
        if value_type == _STRING:
            return self._string()
        if value_type == _ARRAY:
            if depth >= _MAX_ARRAY_NESTING:
                raise self._fail(f"{key}: arrays nested deeper than {_MAX_ARRAY_NESTING}")
            item_type, count = self._unpack("<IQ")
            if item_type == _STRING:
                self._check_count(count, 8, f"strings in {key}")
                return self._strings(count, key)
            if item_type == _ARRAY:
                self._check_count(count, 12, f"arrays in {key}")
                return [self._value(_ARRAY, key, depth + 1) for _ in range(count)]
            if item_type not in _SCALAR_FORMATS:
                raise self._fail(f"{key}: unknown array item type {item_type}")
            item_format = _SCALAR_FORMATS[item_type]
            self._check_count(count, struct.calcsize(item_format), f"items in {key}")
            return list(self._unpack(f"<{count}{item_format}"))
        if value_type not in _SCALAR_FORMATS:
            raise self._fail(f"{key}: unknown metadata type {value_type}")
        return self._unpack("<" + _SCALAR_FORMATS[value_type])[0]

    def _tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string()
        (num_dims,) = self._unpack("<I")
        if not 1 <= num_dims <= _MAX_DIMS:
            raise self._fail(f"tensor {name!r} has {num_dims} dimensions (1 to {_MAX_DIMS})")
        dims = self._unpack(f"<{num_dims}Q")
        raw_type, offset = self._unpack("<IQ")
        return name, tuple(int(d) for d in dims), raw_type, offset

    def _tensor(
        self, name: str, dims: tuple[int, ...], raw_type: int, offset: int, data_start: int
    ) -> GGUFTensor:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            tensor_type = GGMLQuantizationType(raw_type)
            block_size, type_size = GGML_QUANT_SIZES[tensor_type]
        except (ValueError, KeyError) as e:
            raise GGUFFormatError(
                f"{self.path}: tensor {name!r} has unknown type {raw_type}") from e
        if dims[0] % block_size:
            raise GGUFFormatError(f"{self.path}: tensor {name!r}: its rows ({dims[0]}) are not "
                                  f"whole blocks of {block_size} ({tensor_type.name})")
        n_elements = 1
        for d in dims:  # Python ints: no overflow, and a huge shape fails the size check
            n_elements *= d
        n_bytes = n_elements // block_size * type_size
        start = data_start + offset
        if start + n_bytes > self._size:
            raise GGUFFormatError(
                f"{self.path}: tensor {name!r} ({tensor_type.name}, shape {list(dims)}, "
                f"{n_bytes} bytes at offset {start}) runs past the end of the file "
                f"({self._size} bytes): truncated or corrupt")
        raw = self._mmap[start : start + n_bytes]
        rows = tuple(reversed(dims[1:]))
        dtype = _PLAIN_DTYPES.get(tensor_type.name)
        if dtype is not None:
            data = raw.view(dtype).reshape(*rows, dims[0])
        else:
            data = raw.reshape(*rows, dims[0] // block_size * type_size)
        return GGUFTensor(name, tensor_type, dims, n_elements, n_bytes, start, data)
