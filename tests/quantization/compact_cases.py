"""What the tests of the GGUF weights held in the file's compact form share (test_kquant.py:
KQuantWeight, test_q5.py: Q5Weight): a merged layer built three ways from the same blocks, and
the checks that the compact form computes the multiplied-out PackedGroupWeight's bits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf.quants import dequantize

from pagedllm.model_executor.quantization.gguf_blocks import decode_gguf_blocks
from pagedllm.model_executor.quantization.group_quant import concat_rows, to_kernel


def build_layer(
    shards: list[tuple[object, np.ndarray]], cols: int, decode: Callable, concat: Callable,
    weight_cls: Callable,
) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:  # fmt: skip
    """(compact, packed, reference) of a layer merged from shards [(qtype, blocks [rows, bytes])]
    of `cols` columns: weight_cls(concat(decode(blocks, type name, shape) per shard)), the
    PackedGroupWeight the same blocks decode to, and gguf-py's dequantization."""
    shapes = [(data.shape[0], cols) for _, data in shards]
    compact = weight_cls(concat([decode(d, q.name, s) for (q, d), s in zip(shards, shapes)]))
    packed = to_kernel(concat_rows([decode_gguf_blocks(d, q, s) for (q, d), s in
                                    zip(shards, shapes)]))  # fmt: skip
    reference = torch.cat([torch.from_numpy(dequantize(d, q).reshape(s).copy())
                           for (q, d), s in zip(shards, shapes)])  # fmt: skip
    return compact, packed, reference


def check_same_bits(name: str, compact, packed, reference: torch.Tensor) -> None:
    """compact dequantizes to gguf-py's values and to packed's bits, gathers packed's rows, and
    its products are packed's bits at every row count, with int16 and int8 activations, and a
    row's bits do not depend on the rows sharing its call (batch invariance)."""
    # (centred codes: min + offset * scale rounds once, as PackedGroupWeight's does)
    atol = 2**-22 * float(reference.abs().max())
    torch.testing.assert_close(compact.dequantize(), reference, rtol=1e-6, atol=atol)
    assert torch.equal(compact.dequantize(), packed.dequantize())
    ids = torch.tensor([5, 0, compact.out_features - 1])
    assert torch.equal(compact.gather_rows(ids), packed.gather_rows(ids))
    rng = np.random.default_rng(7)
    # 40 rows: the kernel's block-decoded path (from 32 rows, quant/kquant.h's kScratchRows);
    # fewer: scales and codes decoded inside the tile loop. Both give every row the same bits.
    x = torch.from_numpy(rng.standard_normal((40, compact.in_features), dtype=np.float32))
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


def bits_per_weight(compact, packed) -> tuple[float, float]:
    """Bits a weight the compact form holds (its weight_bytes), and the packed form (buffers)."""
    weights = compact.out_features * compact.in_features
    packed_bytes = sum(t.numel() * t.element_size() for t in packed.buffers())
    return 8 * compact.weight_bytes() / weights, 8 * packed_bytes / weights
