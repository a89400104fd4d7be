"""The K-quant kernel alone: KQuantWeight (compact scales, 6-bit codes) against PackedGroupWeight
(float scales, 8-bit codes) on the same random GGUF blocks, 1B-class Llama shapes, in one
process with the two alternating call by call (a shared machine's drift cancels in the ratios).
Reports the best time of each per shape and row count, the bytes each holds, and checks that the
two give the same bits.

    PAGEDLLM_NUM_THREADS=1 python benchmarks/kquant_kernel.py \
        --output-json benchmarks/results/kquant_kernel_1thread.json
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from pagedllm.benchmarks.ab import best_alternating, load_average
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


def _nbytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.buffers() if t is not None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 128])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--output-json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    record = {"threads": torch.get_num_threads(), "load_before": load_average(), "shapes": []}
    for name, shards, k in SHAPES:
        data = [(q, random_blocks(q, rows, k, rng), (rows, k)) for q, rows in shards]
        compact = KQuantWeight(concat_k_rows([decode_k_blocks(d, q.name, s) for q, d, s in data]))
        packed = to_kernel(concat_rows([decode_gguf_blocks(d, q, s) for q, d, s in data]))
        weights = compact.out_features * k
        row = {"name": name, "out": compact.out_features, "in": k,
               "bits_per_weight": {"packed": 8 * _nbytes(packed) / weights,
                                   "compact": 8 * _nbytes(compact) / weights},
               "rows": {}}  # fmt: skip
        for m in args.rows:
            x = torch.from_numpy(rng.standard_normal((m, k), dtype=np.float32))
            assert torch.equal(compact(x), packed(x)), name
            best = best_alternating({"packed": partial(packed, x), "compact": partial(compact, x)},
                                    args.reps)  # fmt: skip
            row["rows"][str(m)] = {"packed_ms": round(1e3 * best["packed"], 3),
                                   "compact_ms": round(1e3 * best["compact"], 3),
                                   "speedup": round(best["packed"] / best["compact"], 3),
                                   }  # fmt: skip
        print(json.dumps(row), flush=True)
        record["shapes"].append(row)
    record["load_after"] = load_average()
    if args.output_json:
        write_record(record, args.output_json)


if __name__ == "__main__":
    main()
