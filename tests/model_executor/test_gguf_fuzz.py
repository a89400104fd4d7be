"""The GGUF reader against malformed files: truncations, flipped bytes and huge counts, lengths
and offsets written into a small valid file (seeded, so every run tries the same 300 files).
Each must parse (every tensor inside the file) or raise GGUFFormatError, a ValueError naming the
problem; never another exception, a crash or a hang."""

from __future__ import annotations

import random
import struct
import time

import numpy as np
import pytest

from pagedllm.model_executor.model_loader.gguf_file import GGUFFile, GGUFFormatError

NUM_CASES = 300
HUGE = (2**64 - 1, 2**63, 2**40, 2**32 - 1, 10**9)


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory) -> bytes:
    from gguf import GGMLQuantizationType, GGUFWriter

    path = str(tmp_path_factory.mktemp("gguf") / "valid.gguf")
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_string("general.name", "fuzz")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b", "ab"])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0, -3.0])
    writer.add_array("nested", [[1, 2], [3]])
    writer.add_tensor("token_embd.weight", np.arange(128, dtype=np.float32).reshape(4, 32))
    q8 = np.zeros((2, 34), dtype=np.uint8)  # two Q8_0 blocks of 32 weights (2 + 32 bytes each)
    writer.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(path, "rb") as f:
        return f.read()


def _parse(tmp_path, data: bytes, name: str = "case") -> GGUFFile:
    path = tmp_path / f"{name}.gguf"  # a new file each time: an earlier reader maps the old one
    path.write_bytes(data)
    return GGUFFile(str(path))


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(["truncate", "flip", "huge", "huge_header"])
    if kind == "truncate":
        return data[:rng.randrange(len(data))]
    out = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    # a huge 8- or 4-byte number where a count, a length, a dimension or an offset may be
    header_end = len(data) - 256  # the tensor data (two tensors, 256 bytes at most) is last
    offset = rng.randrange(4, max(5, header_end - 8)) if kind == "huge" else rng.choice([8, 16])
    value = rng.choice(HUGE)
    packed = struct.pack("<Q", value) if rng.random() < 0.7 else struct.pack("<I", value % 2**32)
    out[offset:offset + len(packed)] = packed
    return bytes(out)


def test_the_valid_file_parses(tmp_path, valid_gguf):
    reader = _parse(tmp_path, valid_gguf)
    assert reader.fields["tokenizer.ggml.tokens"] == ["<s>", "a", "b", "ab"]
    assert reader.fields["nested"] == [[1, 2], [3]]
    embd, q = reader.tensors
    assert embd.data.tolist() == np.arange(128, dtype=np.float32).reshape(4, 32).tolist()
    assert q.data.shape == (2, 34) and q.n_bytes == 68


def test_malformed_files_give_a_clear_error(tmp_path, valid_gguf):
    rng = random.Random(22)
    outcomes = {"parsed": 0, "refused": 0}
    slowest = 0.0
    for case in range(NUM_CASES):
        data = _mutate(valid_gguf, rng)
        start = time.perf_counter()
        try:
            reader = _parse(tmp_path, data, f"case{case}")
        except GGUFFormatError as e:
            assert str(tmp_path) in str(e), e  # the message names the file
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001 - anything else is the bug this test hunts
            pytest.fail(f"case {case}: {type(e).__name__}: {e}")
        else:  # a mutation the format cannot detect (a flipped weight): still inside the file
            for tensor in reader.tensors:
                assert tensor.data_offset + tensor.n_bytes <= len(data)
                assert tensor.data.nbytes == tensor.n_bytes
            outcomes["parsed"] += 1
        slowest = max(slowest, time.perf_counter() - start)
    assert outcomes["refused"] > NUM_CASES // 2, outcomes
    assert slowest < 1.0, slowest


@pytest.mark.parametrize(("offset", "packed", "message"), [
    (8, struct.pack("<Q", 2**62), "tensors cannot fit"),  # tensor count
    (16, struct.pack("<Q", 2**62), "metadata entries cannot fit"),  # metadata count
    (24, struct.pack("<Q", 2**40), "runs past the end"),  # the first key's length
])
def test_huge_counts_are_named(tmp_path, valid_gguf, offset, packed, message):
    data = bytearray(valid_gguf)
    data[offset:offset + 8] = packed
    with pytest.raises(GGUFFormatError, match=message):
        _parse(tmp_path, bytes(data))


def test_truncated_tensor_data_is_named(tmp_path, valid_gguf):
    last = _parse(tmp_path, valid_gguf).tensors[-1]
    with pytest.raises(GGUFFormatError, match="blk.0.attn_q.weight.*runs past the end"):
        _parse(tmp_path, valid_gguf[:last.data_offset + last.n_bytes - 1])


@pytest.mark.parametrize("data", [b"", b"GGU", b"NOTGGUF" + bytes(40)])
def test_not_gguf(tmp_path, data):
    with pytest.raises(GGUFFormatError, match="not a GGUF file|truncated"):
        _parse(tmp_path, data)
