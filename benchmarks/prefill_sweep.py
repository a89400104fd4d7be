"""Prefill and decode against the peers at several prompt lengths (issue 25: prefill >= 2x
llama.cpp at every prompt length up to 4k tokens), one `pagedllm bench latency` run per length
so each length's engines run side by side, taking turns, on the same fresh prompts.

    python benchmarks/prefill_sweep.py --input-lens 128 512 1024 2048 4000 --peers llamacpp \
        --output-json benchmarks/results/prefill_sweep.json -- --num-threads 2

Flags after `--` go to every `bench latency` run (engine flags, --num-threads). The table printed
at the end holds each length's prefill and decode tok/s and our ratio to each peer; the JSON
keeps every run's full record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from pagedllm.benchmarks.results import build_record, write_record


def run_length(input_len: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "latency.json")
        command = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "bench", "latency",
                   "--batch-size", "1", "--input-len", str(input_len),
                   "--output-len", str(args.output_len), "--num-iters", str(args.num_iters),
                   "--max-model-len", str(input_len + args.output_len + 64),
                   "--peers", *args.peers, "--output-json", out, *args.bench_args]  # fmt: skip
        if args.model:
            command += ["--model", args.model]
        print("$", " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True)
        with open(out) as f:
            return json.load(f)


def summarize(input_len: int, record: dict) -> dict:
    result = record["results"][0]
    row: dict = {"input_len": input_len}
    for engine, figures in result["engines"].items():
        row[engine] = {"prefill_tok_s": figures["prefill_tok_s"],
                       "decode_tok_s": figures["decode_tok_s"]}  # fmt: skip
    row["ratios"] = {peer: {"prefill": r["prefill_tok_s"], "decode": r["decode_tok_s"]}
                     for peer, r in result["ratios"].items()}  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--input-lens", type=int, nargs="+", default=[128, 512, 1024, 2048, 4000])
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--num-iters", type=int, default=2)
    parser.add_argument("--peers", nargs="+", default=["llamacpp"])
    parser.add_argument("--output-json", default=None)
    parser.add_argument("bench_args", nargs="*", help="more `bench latency` flags (after --)")
    args = parser.parse_args()

    rows, runs = [], []
    for input_len in args.input_lens:
        record = run_length(input_len, args)
        runs.append(record)
        rows.append(summarize(input_len, record))
    print(f"\n{'prompt':>7} | {'ours prefill / decode tok/s':>28} | "
          "peers (prefill / decode, ratio)")
    for row in rows:
        ours = row["pagedllm"]
        peers = "; ".join(
            f"{peer} {row[peer]['prefill_tok_s']:.1f} / {row[peer]['decode_tok_s']:.1f} "
            f"({ratio['prefill']:.2f}x / {ratio['decode']:.2f}x)"
            for peer, ratio in row["ratios"].items())  # fmt: skip
        print(f"{row['input_len']:>7} | {ours['prefill_tok_s']:>12.1f} / "
              f"{ours['decode_tok_s']:<13.1f} | {peers}")
    record = build_record("prefill_sweep", args, runs[0]["model"], rows, runs=runs)
    write_record(record, args.output_json or os.path.join("benchmarks", "results",
                                                          "prefill_sweep.json"))


if __name__ == "__main__":
    main()
