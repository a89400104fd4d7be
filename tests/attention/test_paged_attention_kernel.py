"""The compiled paged attention kernel (torch.ops.pagedllm.paged_attention) on one long request:
each query row's output is the same bits whether the prompt runs as one prefill, in chunks
beside another request, or token by token as decodes (the batch-invariance promise at the
kernel, for the fixed head sizes' register path and a generic size), and each is within float32
rounding of a float64 softmax(q k^T) v."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagedllm import envs

HEADS, KV_HEADS = 6, 2
LENGTH = 75  # tokens of the request: several 16-key steps and 8-row tiles, a ragged end
CHUNKS = (5, 11, 16, 1, 29, 13)  # a chunked prefill of LENGTH tokens


def _kernels() -> None:
    from pagedllm.kernels import cpu_kernels_available

    if not envs.compiled_kernels() or not cpu_kernels_available():
        pytest.skip("the compiled kernels are not built here")


def _request(head_dim: int, block_size: int, dtype: torch.dtype, seed: int = 0,
             length: int = LENGTH):
    """A request's queries [length, HEADS, D], its K/V caches scattered over shuffled blocks
    (the other blocks hold a second request's keys), and its block table row."""
    rng = np.random.default_rng(seed)
    blocks = -(-length // block_size)
    num_blocks = 2 * blocks + 3

    def rand(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))

    q = rand(length, HEADS, head_dim)
    key_cache = rand(num_blocks, block_size, KV_HEADS, head_dim).to(dtype)
    value_cache = rand(num_blocks, block_size, KV_HEADS, head_dim).to(dtype)
    order = torch.from_numpy(rng.permutation(num_blocks).astype(np.int32))
    return q, key_cache, value_cache, order[:blocks], order[blocks:]


def _attend(q, key_cache, value_cache, tables, seq_lens, query_lens, window, cap):
    width = max(len(t) for t in tables)
    table = torch.zeros(len(tables), width, dtype=torch.int32)
    for i, t in enumerate(tables):
        table[i, : len(t)] = t
    starts = torch.tensor([0, *np.cumsum(query_lens)], dtype=torch.int32)
    return torch.ops.pagedllm.paged_attention(
        q, key_cache, value_cache, table, torch.tensor(seq_lens, dtype=torch.int32), starts,
        q.shape[-1] ** -0.5, window, cap,
    )  # fmt: skip


def _reference(q, key_cache, value_cache, table, window, cap) -> torch.Tensor:
    """float64 causal attention of the request's rows over its cached keys."""
    D, length = q.shape[-1], q.shape[0]
    k = key_cache[table.long()].reshape(-1, KV_HEADS, D)[:length].double()
    v = value_cache[table.long()].reshape(-1, KV_HEADS, D)[:length].double()
    k, v = (t.repeat_interleave(HEADS // KV_HEADS, dim=1) for t in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * D**-0.5
    if cap:
        scores = cap * torch.tanh(scores / cap)
    pos = torch.arange(length)
    visible = pos[None, :] <= pos[:, None]
    if window:
        visible &= pos[None, :] > pos[:, None] - window
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


@pytest.mark.parametrize("head_dim", [64, 128, 48])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("window", "cap"), [(0, 0.0), (21, 0.0), (0, 30.0)])
@pytest.mark.parametrize("block_size", [4, 16])
def test_rows_are_the_same_bits_in_prefill_chunks_and_decodes(
    head_dim, dtype, window, cap, block_size
):
    _kernels()
    q, key_cache, value_cache, table, other = _request(head_dim, block_size, dtype)
    whole = _attend(q, key_cache, value_cache, [table], [LENGTH], [LENGTH], window, cap)

    # chunks, each beside a decode of another request whose rows come first
    done, chunked = 0, []
    for n in CHUNKS:
        rows = torch.cat((q[:1] * 0.5, q[done : done + n]))
        seq_lens = [len(other) * block_size, done + n]
        out = _attend(rows, key_cache, value_cache, [other, table], seq_lens, [1, n], window, cap)
        chunked.append(out[1:])
        done += n
    assert done == LENGTH
    chunked = torch.cat(chunked)

    # every token as a decode, all in one batch
    decodes = _attend(q, key_cache, value_cache, [table] * LENGTH, list(range(1, LENGTH + 1)),
                      [1] * LENGTH, window, cap)  # fmt: skip

    for name, got in (("chunked prefill", chunked), ("decodes", decodes)):
        diff = (got != whole).any(dim=(1, 2)).nonzero().flatten().tolist()
        assert not diff, f"{name}: rows {diff} differ from the whole prefill's"
    expected = _reference(q, key_cache, value_cache, table, window, cap)
    torch.testing.assert_close(whole.double(), expected, atol=2e-5, rtol=1e-5)


LONG = 1200  # three of the kernel's 512-key segments, the last one partial
LONG_CHUNKS = (300, 400, 1, 250, 249)  # chunks ending inside segments and on no boundary


@pytest.mark.parametrize(("head_dim", "dtype"), [(64, torch.float32), (48, torch.float16)])
@pytest.mark.parametrize("window", [0, 700])
def test_long_rows_are_the_same_bits_in_any_batch_and_thread_count(head_dim, dtype, window):
    """Rows over more than one segment (each its own online softmax, merged in order: split into
    work items for decodes, in turn for prefill tiles) still give a row the same bits as a
    prefill, in chunks, as decodes (alone and batched) and at 1 or 2 threads, within float32
    rounding of float64; a sliding window that starts inside a segment too."""
    _kernels()
    q, key_cache, value_cache, table, other = _request(head_dim, 16, dtype, seed=1, length=LONG)
    whole = _attend(q, key_cache, value_cache, [table], [LONG], [LONG], window, 0.0)

    done, chunked = 0, []
    for n in LONG_CHUNKS:
        rows = torch.cat((q[:1] * 0.5, q[done : done + n]))
        seq_lens = [len(other) * 16, done + n]
        out = _attend(rows, key_cache, value_cache, [other, table], seq_lens, [1, n], window, 0.0)
        chunked.append(out[1:])
        done += n
    assert done == LONG
    chunked = torch.cat(chunked)

    positions = [0, 511, 512, 513, 700, 1023, 1024, 1025, LONG - 1]
    decodes = _attend(q[positions], key_cache, value_cache, [table] * len(positions),
                      [p + 1 for p in positions], [1] * len(positions), window, 0.0)  # fmt: skip
    alone = torch.cat([
        _attend(q[p : p + 1], key_cache, value_cache, [table], [p + 1], [1], window, 0.0)
        for p in (LONG - 1, 600)
    ])  # fmt: skip
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        other_threads = _attend(q, key_cache, value_cache, [table], [LONG], [LONG], window, 0.0)
    finally:
        torch.set_num_threads(threads)

    assert torch.equal(chunked, whole), "chunked prefill"
    assert torch.equal(decodes, whole[positions]), "batched decodes"
    assert torch.equal(alone, whole[[LONG - 1, 600]]), "decodes alone"
    assert torch.equal(other_threads, whole), "another thread count"
    expected = _reference(q, key_cache, value_cache, table, window, 0.0)
    torch.testing.assert_close(whole.double(), expected, atol=2e-5, rtol=1e-5)
