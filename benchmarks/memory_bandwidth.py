"""The single-stream decode ceiling that memory bandwidth sets, against measured decode rates.

Decoding one token of a dense model reads every weight once (the KV cache of a short prompt is
small beside them), so tok/s <= read bandwidth / weight bytes. This measures the read bandwidth
at --threads (best of --reps sums over a --gib GiB float32 buffer, far past L3) and prints that
ceiling for SmolLM2-135M's float32 and bfloat16 weights, beside decode rates measured in the
same run by `pagedllm bench latency --peers llamacpp` (--latency-json files: ours and
llama.cpp's F32/BF16 copies). An engine near the ceiling can only be beaten by 1.5x by reading
fewer bytes.

    python benchmarks/memory_bandwidth.py --threads 2 \
        --latency-json float32=benchmarks/results/latency_fp32.json \
        --output-json benchmarks/results/memory_bandwidth.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

SMOLLM2_PARAMETERS = 134_515_008  # weights read per token, tied head counted once


def read_bandwidth(gib: float, threads: int, reps: int) -> float:
    torch.set_num_threads(threads)
    buf = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - start)
    return buf.numel() * 4 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--latency-json", action="append", default=[],
                        help="DTYPE=`bench latency` JSON at batch 1 (float32 or bfloat16)")
    parser.add_argument("--output-json")
    args = parser.parse_args()

    gbps = read_bandwidth(args.gib, args.threads, args.reps)
    result = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
              "load": os.getloadavg(), "read_gb_s": gbps, "ceilings": {}, "measured": {}}
    print(f"read bandwidth at {args.threads} threads: {gbps:.1f} GB/s")
    for dtype, width in (("float32", 4), ("bfloat16", 2)):
        ceiling = gbps * 1e9 / (SMOLLM2_PARAMETERS * width)
        result["ceilings"][dtype] = ceiling
        print(f"SmolLM2 {dtype}: ceiling {ceiling:.1f} tok/s "
              f"({SMOLLM2_PARAMETERS * width / 1e6:.0f} MB a token)")
    for spec in args.latency_json:  # LABEL=path, LABEL one of the ceilings' dtypes
        label, path = spec.split("=", 1)
        batch_1 = json.load(open(path))["results"][0]["engines"]
        ceiling = result["ceilings"][label]
        for engine, row in batch_1.items():
            decode = row["decode_tok_s"]
            result["measured"][f"{label}/{engine}"] = {
                "decode_tok_s": decode, "fraction_of_ceiling": decode / ceiling}
            print(f"{label} {engine}: decode {decode:.1f} tok/s = {decode / ceiling:.0%} of "
                  f"the ceiling")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
