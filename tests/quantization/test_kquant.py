"""GGUF K-quant weights held with the file's compact scales (KQuantWeight) compute exactly what
the multiplied-out PackedGroupWeight of the same blocks computes (bit for bit, int16 and int8
activations, every row count: batch-invariant as it is), reproduce gguf-py's dequantization, and
take the bytes per weight the layout promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from pagedllm.benchmarks.random_blocks import random_blocks  # noqa: E402
from pagedllm.kernels import cpu_kernels_available  # noqa: E402
from pagedllm.model_executor.quantization.gguf_kquant import (  # noqa: E402
    concat_k_rows,
    decode_k_blocks,
)
from pagedllm.model_executor.quantization.kernels import PackedGroupWeight  # noqa: E402
from pagedllm.model_executor.quantization.kquant_weight import KQuantWeight  # noqa: E402
from tests.quantization.compact_cases import (  # noqa: E402
    bits_per_weight,
    build_layer,
    check_same_bits,
)

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels only")

COLS = 512
# a layer's shards (rows each): one type, and the mixes of Q4_K_M files (attn_v / ffn_down Q6_K)
LAYERS = {
    "Q4_K": [(T.Q4_K, 32)],
    "Q5_K": [(T.Q5_K, 32)],
    "Q6_K": [(T.Q6_K, 48)],
    "Q4_K+Q6_K": [(T.Q4_K, 32), (T.Q4_K, 16), (T.Q6_K, 16)],
    "Q4_K+Q5_K": [(T.Q5_K, 16), (T.Q4_K, 16)],
}
BITS = {"Q4_K": 4.625, "Q5_K": 6.625, "Q6_K": 6.625, "Q4_K+Q6_K": 7.125, "Q4_K+Q5_K": 6.625}


def _blocks(qtype, rows: int, seed: int) -> np.ndarray:
    """Random bytes with sane fp16 scales: every bit pattern of codes and sub-scales."""
    return random_blocks(qtype, rows, COLS, np.random.default_rng(seed))


@pytest.fixture(scope="module", params=list(LAYERS))
def layer(request):
    shards = [(qtype, _blocks(qtype, rows, seed)) for seed, (qtype, rows) in
              enumerate(LAYERS[request.param])]  # fmt: skip
    return request.param, *build_layer(shards, COLS, decode_k_blocks, concat_k_rows, KQuantWeight)


def test_same_bits_as_packed_group_weight(layer):
    name, compact, packed, reference = layer
    assert isinstance(packed, PackedGroupWeight) and packed.u4 == compact.u4 == (name == "Q4_K")
    check_same_bits(name, compact, packed, reference)


def test_bytes_per_weight(layer):
    name, compact, packed, _ = layer
    bits, packed_bits = bits_per_weight(compact, packed)
    assert bits == BITS[name]
    assert bits < packed_bits


def test_fused_spec_carries_the_compact_tensors(layer):
    _, compact, _, _ = layer
    spec = compact.fused_weight_spec()
    assert spec.layout == "kquant" and spec.offset == compact.offset
    assert set(spec.tensors) == {"codes", "sub_scales", "sub_mins", "super_scales", "super_mins"}


def test_gguf_loader_picks_the_compact_form(monkeypatch):
    """By default (or PAGEDLLM_COMPACT_KQUANT=1) GGUFLinearMethod's shards (and an embedding
    table) in K types become a KQuantWeight; a non-K shard, or the variable 0, keeps the
    PackedGroupWeight path; the start-up line says which."""
    from pagedllm.model_executor.model_loader.gguf import GGUFWeight
    from pagedllm.model_executor.quantization.gguf import compact_kquant_weight

    def shard(qtype, rows):
        return GGUFWeight(_blocks(qtype, rows, 3), qtype, (rows, COLS))

    monkeypatch.setenv("PAGEDLLM_COMPACT_KQUANT", "1")
    parts = [shard(T.Q4_K, 16), shard(T.Q6_K, 16)]
    weight = compact_kquant_weight(parts)
    assert isinstance(weight, KQuantWeight) and weight.out_features == 32 and not weight.u4
    assert compact_kquant_weight([shard(T.Q4_K, 16), GGUFWeight(
        np.zeros((16, COLS // 32 * 34), np.uint8), T.Q8_0, (16, COLS))]) is None
    monkeypatch.setenv("PAGEDLLM_COMPACT_KQUANT", "0")
    assert compact_kquant_weight(parts) is None
    monkeypatch.delenv("PAGEDLLM_COMPACT_KQUANT")
    assert isinstance(compact_kquant_weight(parts), KQuantWeight)


def test_start_up_line_says_how_k_quants_are_held(layer, monkeypatch, caplog):
    import logging

    from pagedllm.model_executor.quantization.kquant_weight import log_kquant_form

    name, compact, packed, _ = layer
    logger = logging.getLogger("pagedllm.model_executor.quantization.kquant_weight")
    logger.addHandler(caplog.handler)  # (pagedllm's loggers do not propagate to the root)
    try:
        log_kquant_form(torch.nn.ModuleList([compact, packed]))
        assert f"1 matrices keep the file's compact scales (0 MiB, {BITS[name]:.2f} bits" in (
            caplog.text)
        caplog.clear()
        monkeypatch.setenv("PAGEDLLM_COMPACT_KQUANT", "0")
        log_kquant_form(torch.nn.ModuleList([packed]))
        assert "PAGEDLLM_COMPACT_KQUANT=0: GGUF K-quant weights (if any) are held" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)
