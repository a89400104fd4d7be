"""The i8-code (Q8_0) row-interleaved kernel against the u4 (Q4_1) one, per weight, in one
process: SmolLM2-135M's tied LM head (49152 x 576, Q8_0) and its linear shapes, M = 1, 8, 32,
64 activation rows, int16 activations (the default) and int8, the forms alternating call by
call. Reports the best CPU time of each (time.thread_time: at 1 thread, a shared machine's
preemption, which gives a 20 ms call several quanta at load 8-12 on 2 cores, is not counted),
ns per 1000 weight x row products, and the Q8_0 / Q4_1 ratio per weight (the LM head's Q8_0
against a Q4_1 matrix of the same shape).

    PAGEDLLM_NUM_THREADS=1 python benchmarks/lmhead_kernel.py \
        --output-json benchmarks/results/lmhead_kernel_1thread.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from pagedllm.model_executor.quantization.gguf_blocks import decode_gguf_blocks
from pagedllm.model_executor.quantization.group_quant import to_kernel

# (name, out_features, in_features): the LM head and SmolLM2-135M's linears
SHAPES = [
    ("lm_head", 49152, 576),
    ("gate_up", 3072, 576),
    ("down", 576, 1536),
    ("qkv", 960, 576),
]
_FP16 = {T.Q8_0: (0,), T.Q4_1: (0, 2)}
# NOTE: lmhead_ab.py runs this script against another tree's pagedllm (PYTHONPATH=that tree), so
# it imports from pagedllm only the kernel under test and keeps its own copies of what
# pagedllm/benchmarks/random_blocks.py and ab.py hold (random blocks, alternating best-of timing):
# a base tree older than those modules must still run it.


def _blocks(qtype, rows: int, cols: int, rng) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[qtype]
    n = rows * cols // block
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for offset in _FP16[qtype]:
        scale = rng.uniform(0.001, 0.02, n).astype(np.float16)
        blocks[:, offset : offset + 2] = scale.view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, -1)


def _reference_outputs() -> dict[str, torch.Tensor]:
    """The LM head's Q8_0 kernel on fixed inputs: every tile height (8, 2, 1 rows) and both
    activation dtypes, for an exact comparison of two source trees (lmhead_ab.py)."""
    rng = np.random.default_rng(1)
    n, k = SHAPES[0][1:]
    w = to_kernel(decode_gguf_blocks(_blocks(T.Q8_0, n, k, rng), T.Q8_0, (n, k)))
    out = {}
    for bits in (16, 8):
        w.activation_bits = bits
        for m in (1, 3, 17, 64):
            x = torch.from_numpy(rng.standard_normal((m, k), dtype=np.float32))
            out[f"int{bits}/M{m}"] = w(x)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--shapes", nargs="+", default=[s[0] for s in SHAPES])
    parser.add_argument("--activations", nargs="+", default=["int16", "int8"])
    parser.add_argument("--output-json")
    parser.add_argument(
        "--save-outputs",
        help="torch.save the Q8_0 LM head's outputs at M = 1, "
        "3, 17, 64 (int16 and int8 activations) here, to compare two trees' bits",
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("PAGEDLLM_NUM_THREADS", torch.get_num_threads())))
    rng = np.random.default_rng(0)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    record = {"threads": torch.get_num_threads(), "uptime_before": uptime, "shapes": []}
    for name, n, k in SHAPES:
        if name not in args.shapes:
            continue
        weights = {q.name: to_kernel(decode_gguf_blocks(_blocks(q, n, k, rng), q, (n, k)))
                   for q in (T.Q8_0, T.Q4_1)}  # fmt: skip
        row = {"name": name, "out": n, "in": k, "results": {}}
        for act in args.activations:
            for w in weights.values():
                w.activation_bits = 16 if act == "int16" else 8
            for m in args.rows:
                x = torch.from_numpy(rng.standard_normal((m, k), dtype=np.float32))
                best = dict.fromkeys(weights, float("inf"))
                order = list(weights)
                for rep in range(args.reps):
                    for form in order if rep % 2 == 0 else order[::-1]:
                        start = time.thread_time()
                        weights[form](x)
                        best[form] = min(best[form], time.thread_time() - start)
                macs = n * k * m
                res = {f"{q}_ms": round(1e3 * t, 4) for q, t in best.items()}
                res.update({f"{q}_ns_per_kmac": round(1e12 * t / macs, 3)
                            for q, t in best.items()})  # fmt: skip
                res["q8_0_over_q4_1"] = round(best["Q8_0"] / best["Q4_1"], 3)
                row["results"][f"{act} M={m}"] = res
                print(name, act, m, json.dumps(res), flush=True)
        record["shapes"].append(row)
    if args.save_outputs:
        torch.save(_reference_outputs(), args.save_outputs)
    record["uptime_after"] = subprocess.run(["uptime"], capture_output=True,
                                            text=True).stdout.strip()  # fmt: skip
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
