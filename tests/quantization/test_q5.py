"""GGUF Q5_0 / Q5_1 weights held with the file's fp16 scales and 5-bit codes (Q5Weight) compute
exactly what the PackedGroupWeight of the same blocks computes (bit for bit, int16 and int8
activations, every row count and both kernel paths: batch-invariant as it is), reproduce
gguf-py's dequantization, and take the bytes per weight the layout promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGML_QUANT_SIZES  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

from pagedllm.benchmarks.random_blocks import random_blocks  # noqa: E402
from pagedllm.kernels import cpu_kernels_available  # noqa: E402
from pagedllm.model_executor.quantization.kernels import PackedGroupWeight  # noqa: E402
from pagedllm.model_executor.quantization.q5_weight import (  # noqa: E402
    Q5Weight,
    concat_q5_rows,
    decode_q5_blocks,
)
from tests.quantization.compact_cases import (  # noqa: E402
    bits_per_weight,
    build_layer,
    check_same_bits,
)

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels only")

COLS = 160  # 5 groups: not a multiple of 256, as Gemma 3's 640
# a merged layer's shards (rows each); "Q5_0 low": codes 1..30 only (offset 16, min 1 -> not 0)
LAYERS = {"Q5_0": [(T.Q5_0, 32), (T.Q5_0, 16)], "Q5_1": [(T.Q5_1, 48)],
          "Q5_0 narrow": [(T.Q5_0, 16)]}  # fmt: skip
BITS = {"Q5_0": 5.5, "Q5_1": 6.0, "Q5_0 narrow": 5.5}


def _blocks(qtype, rows: int, seed: int, narrow: bool = False) -> np.ndarray:
    """Random bytes with sane fp16 d (and m): every bit pattern of the codes; narrow: codes
    0..15 only (high bits clear), so the packed form's offset is 8, not 16."""
    blocks = random_blocks(qtype, rows, COLS, np.random.default_rng(seed), (-0.02, 0.02))
    if narrow:
        at = 4 if qtype == T.Q5_1 else 2
        blocks.reshape(-1, GGML_QUANT_SIZES[qtype][1])[:, at : at + 4] = 0  # (a view: in place)
    return blocks


@pytest.fixture(scope="module", params=list(LAYERS))
def layer(request):
    narrow = request.param.endswith("narrow")
    shards = [(qtype, _blocks(qtype, rows, seed, narrow)) for seed, (qtype, rows) in
              enumerate(LAYERS[request.param])]  # fmt: skip
    return request.param, *build_layer(shards, COLS, decode_q5_blocks, concat_q5_rows, Q5Weight)


def test_same_bits_as_packed_group_weight(layer):
    name, compact, packed, reference = layer
    assert isinstance(packed, PackedGroupWeight) and not packed.u4
    assert compact.offset == (8 if name.endswith("narrow") else 16)
    check_same_bits(name, compact, packed, reference)


def test_bytes_per_weight(layer):
    name, compact, packed, _ = layer
    bits, packed_bits = bits_per_weight(compact, packed)
    assert bits == BITS[name]
    assert packed_bits >= 9


def test_fused_spec_carries_the_compact_tensors(layer):
    _, compact, _, _ = layer
    spec = compact.fused_weight_spec()
    assert spec.layout == "q5" and spec.offset == compact.offset
    assert set(spec.tensors) == {"codes", "scales", "mins"}


def test_gguf_loader_picks_the_compact_form(monkeypatch, caplog):
    """By default GGUFLinearMethod's shards (and an embedding table) all in Q5_0 or all in
    Q5_1 become a Q5Weight; a mix, or PAGEDLLM_COMPACT_Q5=0 (or PAGEDLLM_COMPACT_KQUANT=0 with
    the Q5 switch unset), keeps the PackedGroupWeight path; the start-up line says which."""
    import logging

    from pagedllm.model_executor.model_loader.gguf import GGUFWeight
    from pagedllm.model_executor.quantization.gguf import compact_kquant_weight
    from pagedllm.model_executor.quantization.kquant_weight import log_kquant_form

    def shard(qtype, rows):
        return GGUFWeight(_blocks(qtype, rows, 3), qtype, (rows, COLS))

    monkeypatch.delenv("PAGEDLLM_COMPACT_Q5", raising=False)
    monkeypatch.delenv("PAGEDLLM_COMPACT_KQUANT", raising=False)
    parts = [shard(T.Q5_0, 16), shard(T.Q5_0, 32)]
    weight = compact_kquant_weight(parts)
    assert isinstance(weight, Q5Weight) and weight.out_features == 48 and not weight.q5_1
    assert compact_kquant_weight([shard(T.Q5_0, 16), shard(T.Q5_1, 16)]) is None
    assert compact_kquant_weight([shard(T.Q5_0, 16), shard(T.Q8_0, 16)]) is None
    logger = logging.getLogger("pagedllm.model_executor.quantization.q5_weight")
    logger.addHandler(caplog.handler)  # (pagedllm's loggers do not propagate to the root)
    try:
        log_kquant_form(torch.nn.ModuleList([weight]))
        assert "1 matrices keep the file's fp16 scales and 5-bit codes (0 MiB, 5.50 bits" in (
            caplog.text)
        caplog.clear()
        for var in ("PAGEDLLM_COMPACT_KQUANT", "PAGEDLLM_COMPACT_Q5"):
            monkeypatch.setenv(var, "0")
            assert compact_kquant_weight(parts) is None
            log_kquant_form(torch.nn.ModuleList([]))
            assert "PAGEDLLM_COMPACT_Q5=0: GGUF Q5_0/Q5_1 weights (if any)" in caplog.text
            monkeypatch.delenv(var)
    finally:
        logger.removeHandler(caplog.handler)
