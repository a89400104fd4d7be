"""`pagedllm bench latency | throughput | serve` (vLLM's `vllm bench`); the benchmarks live in
pagedllm/benchmarks/, this only wires their flags into the CLI."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "latency": "time one batch end to end (prefill and decode tok/s from per-token times, step "
    "profile), with peers (hf, llamacpp, openvino)",
    "throughput": "offline LLM.generate over a dataset: requests/s and tok/s, with peers (hf, "
    "llamacpp, openvino)",
    "serve": "drive a running server over the OpenAI API: TTFT, TPOT, ITL, throughput",
    "speculative": "single-stream decode with and without speculative decoding, with llama.cpp",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark latency, offline throughput or a running server",
        description="Benchmarks modelled on `vllm bench`. Each writes a JSON result (machine, "
        "command line, numbers) and prints peers' results with the ratio "
        "pagedllm / peer.",
    )
    benches = parser.add_subparsers(dest="bench_command", required=True)
    for name, help_text in BENCHMARKS.items():
        module = _module(name)
        sub = benches.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_cli_args(sub)
        sub.set_defaults(func=run)


def _module(name: str):
    return importlib.import_module(f"pagedllm.benchmarks.{name}")


def run(args: argparse.Namespace) -> int:
    _module(args.bench_command).main(args)
    return 0
