"""The K-quant kernel alone: KQuantWeight (compact scales, 6-bit codes) against PackedGroupWeight
(float scales, 8-bit codes) on the same random GGUF blocks, 1B-class Llama shapes, in one
process with the two alternating call by call (a shared machine's drift cancels in the ratios).
Reports the best time of each per shape and row count, the bytes each holds, and checks that the
two give the same bits.

A single weight of these shapes (1-20 MB) stays in a 32 MiB L3 between calls, but decode streams
~0.7 GB of weights a token from DRAM. --cold calls a ring of copies of each weight (together past
--cold-mib) one after the other, so every call reads its weight from memory, and reports the read
rate (GB/s of the form's bytes) to set against benchmarks/memory_bandwidth.py's; --lm-head adds
the tied 128256 x 2048 Q6_K token embedding of Llama 3.2 1B Q4_K_M (217 MB compact: a third of a
token's bytes).

    PAGEDLLM_NUM_THREADS=1 python benchmarks/kquant_kernel.py \
        --output-json benchmarks/results/kquant_kernel_1thread.json
    PAGEDLLM_NUM_THREADS=1 python benchmarks/kquant_kernel.py --cold --lm-head --rows 1 2 4
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from pagedllm import envs
from pagedllm.benchmarks.ab import load_average
from pagedllm.benchmarks.random_blocks import random_blocks
from pagedllm.benchmarks.results import write_record
from pagedllm.model_executor.quantization.gguf_blocks import decode_gguf_blocks
from pagedllm.model_executor.quantization.gguf_kquant import concat_k_rows, decode_k_blocks
from pagedllm.model_executor.quantization.group_quant import concat_rows, to_kernel
from pagedllm.model_executor.quantization.kquant_weight import KQuantWeight

# (name, [(type, rows)], in_features): Llama 3.2 1B's layers as llama.cpp's Q4_K_M stores them
SHAPES = [
    ("qkv Q4_K|Q4_K|Q6_K", [(T.Q4_K, 2048), (T.Q4_K, 512), (T.Q6_K, 512)], 2048),
    ("gate_up Q4_K", [(T.Q4_K, 16384)], 2048),
    ("down Q6_K", [(T.Q6_K, 2048)], 8192),
    ("down Q4_K", [(T.Q4_K, 2048)], 8192),
    # Gemma 3 270M's K-quant layers (its other linears are Q5_0 / Q8_0)
    ("gemma attn_output Q4_K", [(T.Q4_K, 640)], 1024),
    ("gemma ffn_down Q6_K", [(T.Q6_K, 640)], 2048),
]
LM_HEAD = ("lm_head Q6_K", [(T.Q6_K, 128256)], 2048)


def _nbytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.buffers() if t is not None)


def _ring(weight, mib: int) -> list:
    """`weight` and copies of it, together at least `mib` MiB (just `weight` for 0)."""
    copies = max(1, -(-mib * 2**20 // _nbytes(weight)))
    return [weight] + [copy.deepcopy(weight) for _ in range(copies - 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 128])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--cold", action="store_true",
                        help="read each weight from memory (a ring of copies past the cache)")
    parser.add_argument("--cold-mib", type=int, default=256)
    parser.add_argument("--lm-head", action="store_true", help="add the 1B's LM head shape")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the calling thread's CPU time (one thread; a loaded machine's "
                        "preemption does not count)")
    parser.add_argument("--only", nargs="*", help="shapes whose name starts with one of these")
    parser.add_argument("--save-outputs", help="torch.save the compact outputs here (to compare "
                        "two source trees' bits)")
    parser.add_argument("--output-json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if envs.num_threads():
        torch.set_num_threads(envs.num_threads())
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu times the calling thread: run it with PAGEDLLM_NUM_THREADS=1")
    record = {"threads": torch.get_num_threads(), "load_before": load_average(),
              "cold": args.cold, "clock": args.clock, "shapes": []}  # fmt: skip
    shapes = SHAPES + [LM_HEAD] if args.lm_head else SHAPES
    if args.only:
        shapes = [s for s in shapes if any(s[0].startswith(o) for o in args.only)]
    outputs: dict[str, torch.Tensor] = {}
    for name, shards, k in shapes:
        data = [(q, random_blocks(q, rows, k, rng), (rows, k)) for q, rows in shards]
        compact = KQuantWeight(concat_k_rows([decode_k_blocks(d, q.name, s) for q, d, s in data]))
        packed = to_kernel(concat_rows([decode_gguf_blocks(d, q, s) for q, d, s in data]))
        weights = compact.out_features * k
        row = {"name": name, "out": compact.out_features, "in": k,
               "bits_per_weight": {"packed": 8 * _nbytes(packed) / weights,
                                   "compact": 8 * _nbytes(compact) / weights},
               "rows": {}}  # fmt: skip
        forms = {"packed": packed, "compact": compact}
        # (a ring of copies past the cache: each call reads its weight from memory)
        rings = {f: _ring(w, args.cold_mib if args.cold else 0) for f, w in forms.items()}
        row["copies"] = {f: len(r) for f, r in rings.items()}
        for m in args.rows:
            x = torch.from_numpy(rng.standard_normal((m, k), dtype=np.float32))
            y = compact(x)
            assert torch.equal(y, packed(x)), name
            outputs[f"{name} x{m}"] = y
            best = {"packed": float("inf"), "compact": float("inf")}
            for rep in range(args.reps):
                for form in ("packed", "compact") if rep % 2 == 0 else ("compact", "packed"):
                    for w in rings[form]:
                        start = clock()
                        w(x)
                        best[form] = min(best[form], clock() - start)
            row["rows"][str(m)] = {"packed_ms": round(1e3 * best["packed"], 3),
                                   "compact_ms": round(1e3 * best["compact"], 3),
                                   "speedup": round(best["packed"] / best["compact"], 3),
                                   "packed_gb_s": round(_nbytes(packed) / best["packed"] / 1e9, 2),
                                   "compact_gb_s": round(_nbytes(compact) / best["compact"] / 1e9,
                                                         2),
                                   }  # fmt: skip
        print(json.dumps(row), flush=True)
        record["shapes"].append(row)
    record["load_after"] = load_average()
    if args.save_outputs:
        torch.save(outputs, args.save_outputs)
    if args.output_json:
        write_record(record, args.output_json)


if __name__ == "__main__":
    main()
