"""Every attention backend against the reference (torch_ref) on mixed prefill/decode batches."""

from __future__ import annotations

import random

import pytest
import torch

from pagedllm.attention.backend import CommonAttentionMetadata
from pagedllm.attention.selector import BACKENDS

BLOCK_SIZE = 4
NUM_BLOCKS = 64


def _batch(query_lens: list[int], cached_lens: list[int], seed: int = 0):
    """A batch with random block tables; request i has cached_lens[i] tokens already in cache."""
    rng = random.Random(seed)
    free = list(range(NUM_BLOCKS))
    rng.shuffle(free)
    seq_lens = [c + q for c, q in zip(cached_lens, query_lens)]
    width = max(-(-s // BLOCK_SIZE) for s in seq_lens)
    table = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    slots = []
    for i, (cached, seq_len) in enumerate(zip(cached_lens, seq_lens)):
        blocks = [free.pop() for _ in range(-(-seq_len // BLOCK_SIZE))]
        table[i, : len(blocks)] = torch.tensor(blocks)
        slots += [blocks[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
                  for p in range(cached, seq_len)]
    qsl = [0]
    for q in query_lens:
        qsl.append(qsl[-1] + q)
    return CommonAttentionMetadata(
        num_actual_tokens=qsl[-1],
        query_start_loc=torch.tensor(qsl, dtype=torch.int32), query_start_loc_cpu=qsl,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32), seq_lens_cpu=seq_lens,
        block_table=table, slot_mapping=torch.tensor(slots, dtype=torch.long),
        max_query_len=max(query_lens), max_seq_len=max(seq_lens), block_size=BLOCK_SIZE,
    )


def _step_qkv(common: CommonAttentionMetadata, num_heads: int, num_kv_heads: int,
              head_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """This step's random query, key and value rows (seeded: the same for every backend)."""
    torch.manual_seed(0)
    tokens = common.num_actual_tokens
    return (torch.randn(tokens, num_heads, head_size),
            torch.randn(tokens, num_kv_heads, head_size),
            torch.randn(tokens, num_kv_heads, head_size))  # fmt: skip


CASES = {
    "decodes": ([1, 1, 1, 1], [5, 17, 2, 30]),
    "prefills": ([7, 12, 3], [0, 0, 0]),
    "mixed_with_cached_prefix": ([1, 9, 1, 6, 1], [20, 8, 3, 0, 41]),
}


@pytest.mark.parametrize("backend_name", [n for n in BACKENDS.names() if n != "torch_ref"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("sliding_window", [None, 5])
@pytest.mark.parametrize("soft_cap", [None, 30.0])
@pytest.mark.parametrize("head_size", [16, 64])  # 64: the compiled kernel's register path
def test_backend_matches_reference(backend_name, case, heads, sliding_window, soft_cap,
                                   head_size):  # fmt: skip
    num_heads, num_kv_heads = heads
    common = _batch(*CASES[case])
    q, k, v = _step_qkv(common, num_heads, num_kv_heads, head_size)
    outputs = []
    for name in ("torch_ref", backend_name):
        backend = BACKENDS.get(name)
        torch.manual_seed(1)  # both caches start with the same "earlier" K/V
        cache = torch.randn(backend.get_kv_cache_shape(NUM_BLOCKS, BLOCK_SIZE, num_kv_heads,
                                                       head_size))
        impl = backend.get_impl_cls()(num_heads, head_size, head_size**-0.5, num_kv_heads,
                                      sliding_window, soft_cap)
        metadata = backend.get_builder_cls()().build(common)
        outputs.append(impl.forward(q, k, v, cache, metadata))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend_name", [n for n in BACKENDS.names() if n != "torch_ref"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("head_size", [16, 64])  # 64: the compiled kernel's register path
def test_backend_reads_fp16_cache(backend_name, case, head_size):
    """Attention over a float16 cache (--kv-cache-dtype fp16) equals the reference over a
    float32 cache holding the same values, this step's K/V rounded to float16 as they are
    written."""
    num_heads, num_kv_heads = 8, 2
    common = _batch(*CASES[case])
    q, k, v = _step_qkv(common, num_heads, num_kv_heads, head_size)
    outputs = []
    for name, dtype in (("torch_ref", torch.float32), (backend_name, torch.float16)):
        backend = BACKENDS.get(name)
        torch.manual_seed(1)
        shape = backend.get_kv_cache_shape(NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_size)
        cache = torch.randn(shape).half().to(dtype)
        key, value = (t.half().to(torch.float32) for t in (k, v)) if dtype == torch.float32 else (
            k, v)  # fmt: skip
        impl = backend.get_impl_cls()(num_heads, head_size, head_size**-0.5, num_kv_heads)
        metadata = backend.get_builder_cls()().build(common)
        outputs.append(impl.forward(q, key, value, cache, metadata))
        if dtype == torch.float16:  # this step's K/V went in rounded like Tensor.half()
            slots = common.slot_mapping
            assert torch.equal(cache[0].view(-1, num_kv_heads, head_size)[slots], k.half())
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
