"""--kv-cache-dtype int8 read by the compiled paged-attention kernel itself: the same bits as
the float32 kernel over load_kv's dequantized cache (decode rows, prefill tiles, chunked rows,
head sizes 64, 128 and a generic one, GQA, windows, soft caps), and through the cpu_paged
backend (its cache write included)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pagedllm.attention.ops.kv_quant import load_kv, quantize_kv
from pagedllm.attention.selector import BACKENDS
from pagedllm.kernels import cpu_kernels_available
from tests.attention.test_backends import BLOCK_SIZE, CASES, NUM_BLOCKS, _batch

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")


@pytest.mark.parametrize("head_size", [64, 128, 48])  # 48: the generic (not register) path
def test_kernel_reads_int8_cache_as_load_kv_bits(head_size):
    ops, rng, D = torch.ops.pagedllm, np.random.default_rng(0), head_size

    def rand(*shape):
        return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))

    # 4 requests: a 21-token prefill (tiles of 8, 8, 5), a decode at 40, a 3-token chunk after
    # 17 cached, a decode at 1; blocks of 4 in a shuffled table
    seq_lens = torch.tensor([21, 40, 20, 1], dtype=torch.int32)
    starts = torch.tensor([0, 21, 22, 25, 26], dtype=torch.int32)
    table = torch.from_numpy(rng.permutation(48)[:40].reshape(4, 10).astype(np.int32))
    for (heads, kv_heads), (window, cap) in itertools.product(
        ((9, 3), (4, 4), (8, 1)), ((0, 0.0), (6, 0.0), (0, 20.0))
    ):
        q = rand(26, heads, D) * 2
        # rows of very different magnitudes: one scale per (token, head)
        spread = torch.logspace(-2, 1, 48 * 4)[rng.permutation(48 * 4)].view(-1, 1, 1)
        kc, vc = (quantize_kv(rand(48 * 4, kv_heads, D) * spread, torch.int8)
                  .view(48, 4, kv_heads, D + 4) for _ in range(2))  # fmt: skip
        args = (table, seq_lens, starts, D**-0.5, window, cap)
        got = ops.paged_attention(q, kc, vc, *args)
        want = ops.paged_attention(q, load_kv(kc, torch.float32), load_kv(vc, torch.float32), *args)
        assert torch.equal(got, want), (heads, kv_heads, window, cap)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_paged_int8_equals_float_cache_bits(case):
    """The backend writes this step's K/V quantized, then attends in place: exactly the float32
    cache holding the dequantized K/V (the same backend, so bits, not a tolerance)."""
    num_heads, num_kv_heads, head_size = 6, 2, 64
    torch.manual_seed(0)
    common = _batch(*CASES[case])
    q, k, v = (torch.randn(common.num_actual_tokens, h, head_size)
               for h in (num_heads, num_kv_heads, num_kv_heads))  # fmt: skip
    backend = BACKENDS.get("cpu_paged")
    shape = backend.get_kv_cache_shape(NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_size)
    quantized = quantize_kv(torch.randn(shape).view(-1, num_kv_heads, head_size), torch.int8)
    quantized = quantized.view(*shape[:-1], head_size + 4)
    float_cache = load_kv(quantized, torch.float32)
    k_ref, v_ref = (load_kv(quantize_kv(t, torch.int8), torch.float32) for t in (k, v))
    outputs = []
    for cache, key, value in ((float_cache, k_ref, v_ref), (quantized, k, v)):
        impl = backend.get_impl_cls()(num_heads, head_size, head_size**-0.5, num_kv_heads)
        metadata = backend.get_builder_cls()().build(common)
        outputs.append(impl.forward(q, key, value, cache, metadata))
    # the step's K/V went in as quantize_kv encodes them
    assert torch.equal(load_kv(quantized, torch.float32), float_cache)
    assert torch.equal(outputs[1], outputs[0])
