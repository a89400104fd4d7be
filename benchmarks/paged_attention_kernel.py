"""Time the compiled paged attention kernel (torch.ops.pagedllm.paged_attention) alone, on
SmolLM2-135M's heads (9 query heads on 3 KV heads of 64) unless told otherwise.

    python benchmarks/paged_attention_kernel.py --requests 1 --context 3000 --queries 3000
    python benchmarks/paged_attention_kernel.py --requests 64 --context 512 --queries 1
    python benchmarks/paged_attention_kernel.py --requests 64 --context 208 --queries 1 \
        --threads 2 --layers 30

Each request holds `context` tokens and asks for its last `queries` rows (a prefill when they are
equal, a decode at 1). Prints the best and median of --iters calls in wall time and in this
process's CPU time (on a machine shared with other work the CPU time is the steadier figure), and
the best CPU time per (query head, visible key) pair, the unit that makes short and long prompts
comparable.

One cache (--layers 1) of a small batch stays in the L3 between calls; a model's step reads each
layer's cache from memory. --layers 30 (SmolLM2's) calls 30 caches in turn, as a step does. AMD
Zen 3, 64 decodes of 208 keys, float32: ~9 ns a pair from the L3 at 1 thread, 23-31 ns from
memory (~7 GB/s of K/V a core, where benchmarks/memory_bandwidth.py reads 16 GB/s a core);
~15% less with each KV head's rows contiguous (--heads 3 --kv-heads 1 over 3x the requests), no
change from the far prefetch's distance (PAGEDLLM_ATTENTION_FAR_PREFETCH 0-8) or huge pages.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--context", type=int, default=3000)
    p.add_argument("--queries", type=int, default=3000)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--dtype", choices=("float32", "float16", "int8"), default="float32",
                   help="the cache's (int8: values + per-(token, head) scales, kv_quant.py)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--layers", type=int, default=1,
                   help="distinct K/V caches called in turn (a model's layers: 30 for SmolLM2), "
                        "so that past the L3 each call reads its cache from memory as in a step")
    args = p.parse_args()

    from pagedllm.kernels import cpu_kernels_available

    assert cpu_kernels_available(), "the compiled kernels did not build"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    R, L, nq, bs = args.requests, args.context, args.queries, args.block_size
    blocks_per_req = -(-L // bs)
    dtype = getattr(torch, args.dtype)
    shape = (R * blocks_per_req, bs, args.kv_heads, args.head_dim)

    def cache() -> torch.Tensor:
        if dtype == torch.int8:
            from pagedllm.attention.ops.kv_quant import quantize_kv

            return quantize_kv(torch.randn(shape).flatten(0, 1), dtype).view(*shape[:-1], -1)
        return torch.randn(shape).to(dtype)

    caches = [(cache(), cache()) for _ in range(args.layers)]
    table = torch.randperm(R * blocks_per_req, dtype=torch.int32).view(R, blocks_per_req)
    seq_lens = torch.full((R,), L, dtype=torch.int32)
    starts = torch.arange(R + 1, dtype=torch.int32) * nq
    query = torch.randn(R * nq, args.heads, args.head_dim)
    scale = args.head_dim**-0.5

    def call() -> None:
        for key_cache, value_cache in caches:
            torch.ops.pagedllm.paged_attention(
                query, key_cache, value_cache, table, seq_lens, starts, scale, 0, 0.0
            )

    call()
    times, cpu_times = [], []
    for _ in range(args.iters):
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    # (query, key) pairs each query head scores: query i of nq sees L - nq + i + 1 keys
    pairs = R * args.heads * sum(L - nq + i + 1 for i in range(nq)) * args.layers
    best, median = min(times), statistics.median(times)
    cpu_best, cpu_median = min(cpu_times), statistics.median(cpu_times)
    print(
        f"R={R} context={L} queries={nq} H={args.heads}/{args.kv_heads} D={args.head_dim} "
        f"layers={args.layers} "
        f"{args.dtype}: wall best {best * 1e3:.2f} ms median {median * 1e3:.2f} ms | "
        f"cpu best {cpu_best * 1e3:.2f} ms median {cpu_median * 1e3:.2f} ms | "
        f"{cpu_best / pairs * 1e9:.3f} ns per (query head, key)"
    )


if __name__ == "__main__":
    main()
