"""Batched decode against llama.cpp's own batched benchmark, in one run: llama-batched-bench
(B sequences of P prompt tokens, each generating G tokens together) and `pagedllm bench latency`
with the same B, P and G, alternating for --rounds so the machine's drift hits both alike.
The figure compared is decode tokens/s (llama.cpp's S_TG: B * G / text-generation time).

    bash scripts/build_llama_server.sh      # once: builds llama-batched-bench too
    python benchmarks/batched_vs_llama_cpp.py --batch 32 --input-len 128 --output-len 128
    ... --quantization none     # both in float32 (llama.cpp on an F32 copy of the GGUF)

Both keep K/V at the same precision: float16 by default (llama.cpp's own default,
`--kv-cache-dtype fp16` for pagedllm), or float32 with --kv-cache-dtype auto.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from pagedllm.benchmarks.peers import (
    add_kv_precision_arg,
    llama_cpp_kv_type,
    llama_cpp_program,
    llama_cpp_weights,
)
from pagedllm.benchmarks.results import build_record, write_record
from pagedllm.model_executor.model_loader.resolve import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-batched-bench", default=llama_cpp_program("llama-batched-bench"))
    parser.add_argument("--model", default=None, help="GGUF model (default: the embedded one)")
    parser.add_argument("--quantization", default=None, choices=[None, "none"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    add_kv_precision_arg(parser)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output-json", default="benchmarks/results/batched_vs_llama_cpp.json")
    args = parser.parse_args()
    if not args.llama_batched_bench or not os.path.exists(args.llama_batched_bench):
        sys.exit("llama-batched-bench not found: build it with scripts/build_llama_server.sh")
    source = resolve_model(args.model)
    if source.kind != "gguf":
        sys.exit(f"{args.model}: llama.cpp needs a GGUF model")
    llama_weights = llama_cpp_weights(source.file, float32=args.quantization == "none")

    runs: dict[str, list[dict]] = {"llama.cpp": [], "pagedllm": []}
    for round_index in range(args.rounds):
        runs["llama.cpp"].append(_llama_cpp(args, llama_weights))
        runs["pagedllm"].append(_pagedllm(args))
        print(f"round {round_index + 1}: decode tok/s pagedllm "
              f"{runs['pagedllm'][-1]['decode_tok_s']:.1f}, llama.cpp "
              f"{runs['llama.cpp'][-1]['decode_tok_s']:.1f}", flush=True)  # fmt: skip
    ratios = [a["decode_tok_s"] / b["decode_tok_s"]
              for a, b in zip(runs["pagedllm"], runs["llama.cpp"])]  # fmt: skip
    print(f"batch {args.batch}: pagedllm / llama.cpp = {statistics.median(ratios):.2f}x decode "
          f"tok/s (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip
    summary = [dict(batch_size=args.batch, ratios=ratios, median_ratio=statistics.median(ratios))]
    write_record(build_record("batched_vs_llama_cpp", args, source.name, summary, runs=runs),
                 args.output_json)  # fmt: skip


def _llama_cpp(args: argparse.Namespace, weights: str) -> dict:
    b, p, g = args.batch, args.input_len, args.output_len
    cmd = [args.llama_batched_bench, "-m", weights, "-c", str(b * (p + g)), "-b", "2048",
           "-ub", "512", "-npp", str(p), "-ntg", str(g), "-npl", str(b), "-t", str(args.threads),
           "-ctk", llama_cpp_kv_type(args.kv_cache_dtype),
           "-ctv", llama_cpp_kv_type(args.kv_cache_dtype),
           "--output-format", "jsonl"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    row = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return dict(prefill_tok_s=row["speed_pp"], decode_tok_s=row["speed_tg"], raw=row)


def _pagedllm(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "latency.json")
        cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "bench", "latency",
               *(["--model", args.model] if args.model else []),
               "--batch-sizes", str(args.batch), "--input-len", str(args.input_len),
               "--output-len", str(args.output_len), "--num-iters", "1", "--peers", "none",
               "--kv-cache-dtype", args.kv_cache_dtype, "--output-json", out]  # fmt: skip
        if args.quantization:
            cmd += ["--quantization", args.quantization]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            engine = json.load(f)["results"][0]["engines"]["pagedllm"]
    return dict(prefill_tok_s=engine["prefill_tok_s"], decode_tok_s=engine["decode_tok_s"])


if __name__ == "__main__":
    main()
