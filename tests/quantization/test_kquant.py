"""GGUF K-quant weights held with the file's compact scales (KQuantWeight) compute exactly what
the multiplied-out PackedGroupWeight of the same blocks computes (bit for bit, int16 and int8
activations, every row count: batch-invariant as it is), reproduce gguf-py's dequantization, and
take the bytes per weight the layout promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGML_QUANT_SIZES  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

from pagedllm.kernels import cpu_kernels_available  # noqa: E402
from pagedllm.model_executor.quantization.gguf_blocks import decode_gguf_blocks  # noqa: E402
from pagedllm.model_executor.quantization.gguf_kquant import (  # noqa: E402
    concat_k_rows,
    decode_k_blocks,
)
from pagedllm.model_executor.quantization.group_quant import concat_rows, to_kernel  # noqa: E402
from pagedllm.model_executor.quantization.kernels import PackedGroupWeight  # noqa: E402
from pagedllm.model_executor.quantization.kquant_weight import KQuantWeight  # noqa: E402

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels only")

COLS = 512
_FP16_FIELDS = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
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
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    n = rows * COLS // block
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for offset in _FP16_FIELDS[qtype]:
        scale = rng.uniform(0.001, 0.02, n).astype(np.float16)
        blocks[:, offset : offset + 2] = scale.view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, -1)


@pytest.fixture(scope="module", params=list(LAYERS))
def layer(request):
    shards = [(qtype, _blocks(qtype, rows, seed)) for seed, (qtype, rows) in
              enumerate(LAYERS[request.param])]  # fmt: skip
    shapes = [(data.shape[0], COLS) for _, data in shards]
    compact = KQuantWeight(concat_k_rows([decode_k_blocks(d, q.name, s) for (q, d), s in
                                          zip(shards, shapes)]))  # fmt: skip
    packed = to_kernel(concat_rows([decode_gguf_blocks(d, q, s) for (q, d), s in
                                    zip(shards, shapes)]))  # fmt: skip
    reference = torch.cat([torch.from_numpy(dequantize(d, q).reshape(s).copy())
                           for (q, d), s in zip(shards, shapes)])  # fmt: skip
    return request.param, compact, packed, reference


def test_same_bits_as_packed_group_weight(layer):
    name, compact, packed, reference = layer
    assert isinstance(packed, PackedGroupWeight) and packed.u4 == compact.u4 == (name == "Q4_K")
    # (6-bit codes are centred: min + offset * scale rounds once, as PackedGroupWeight's does)
    atol = 2**-22 * float(reference.abs().max())
    torch.testing.assert_close(compact.dequantize(), reference, rtol=1e-6, atol=atol)
    assert torch.equal(compact.dequantize(), packed.dequantize())
    ids = torch.tensor([5, 0, compact.out_features - 1])
    assert torch.equal(compact.gather_rows(ids), packed.gather_rows(ids))
    rng = np.random.default_rng(7)
    # 40 rows: the kernel's block-decoded path (from 32 rows, quant/kquant.h's kScratchRows);
    # fewer: scales and codes decoded inside the tile loop. Both give every row the same bits.
    x = torch.from_numpy(rng.standard_normal((40, COLS), dtype=np.float32))
    for bits in (16, 8):
        compact.activation_bits = packed.activation_bits = bits
        whole = compact(x)
        assert torch.equal(whole, packed(x)), f"{name}: int{bits} activations"
        for rows in (1, 2, 3, 8, 17):
            part = x[3 : 3 + rows]
            assert torch.equal(compact(part), packed(part)), f"{name}: {rows} rows, int{bits}"
            # batch invariance: a row's bits whatever rows share the call (and the path)
            assert torch.equal(compact(part), whole[3 : 3 + rows])
    compact.activation_bits = packed.activation_bits = 16


def test_bytes_per_weight(layer):
    name, compact, packed, _ = layer
    n, k = compact.out_features, compact.in_features
    bits = 8 * compact.weight_bytes() / (n * k)
    assert bits == BITS[name]
    packed_bits = 8 * sum(t.numel() * t.element_size() for t in packed.buffers()) / (n * k)
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
