"""The serving workload against llama.cpp's own server, in one run: `pagedllm bench serve` drives
llama-server and then `pagedllm serve` with the same token-id prompts, output lengths
(ignore_eos) and concurrency, alternating for --rounds so the machine's drift hits both alike.

llama-server is not part of llama-cpp-python's wheel; scripts/build_llama_server.sh builds it from
that package's source (the same llama.cpp version as the in-process peer).

    bash scripts/build_llama_server.sh      # once
    python benchmarks/serve_vs_llama_server.py \\
        --concurrency 32 --num-prompts 64 --min-input 32 --max-input 256 --output-len 128
    ... --quantization none     # both in float32 (llama.cpp on an F32 copy of the GGUF)

Both servers keep K/V at the same precision: float16 by default (llama-server's own default,
`--kv-cache-dtype fp16` for pagedllm), or float32 with --kv-cache-dtype auto.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from pagedllm.benchmarks import serve
from pagedllm.benchmarks.peers import (
    add_kv_precision_arg,
    llama_cpp_kv_type,
    llama_cpp_program,
    llama_cpp_weights,
)
from pagedllm.benchmarks.results import build_record, write_record
from pagedllm.model_executor.model_loader.resolve import resolve_model

LLAMA_PORT, PAGEDLLM_PORT = 8091, 8092


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server",
                        default=os.environ.get("LLAMA_SERVER") or llama_cpp_program("llama-server"),
                        help="the llama-server binary (default: $LLAMA_SERVER, then the one "
                        "scripts/build_llama_server.sh built, then PATH)")  # fmt: skip
    parser.add_argument("--quantization", default=None, choices=[None, "none"],
                        help="none: both servers in float32")  # fmt: skip
    add_kv_precision_arg(parser)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    serve.add_cli_args(parser)  # its --model is the GGUF both servers run (default: embedded)
    args = parser.parse_args()
    if not args.llama_server or not os.path.exists(args.llama_server):
        sys.exit("llama-server not found: build it with scripts/build_llama_server.sh")
    source = resolve_model(args.model)
    if source.kind != "gguf":
        sys.exit(f"{args.model}: llama-server needs a GGUF model")
    concurrency = args.concurrency or [args.max_concurrency or 32]
    slots = max(concurrency)
    ctx_per_slot = (args.max_input or args.input_len or 1024) + (args.max_output or args.output_len)

    kv_type = llama_cpp_kv_type(args.kv_cache_dtype)
    weights = llama_cpp_weights(source.file, float32=args.quantization == "none")
    llama_cmd = [args.llama_server, "-m", weights,
                 "-t", str(args.threads), "-np", str(slots), "-c", str(slots * ctx_per_slot),
                 # an HTTP thread per client: its default pool is a few threads, which admits
                 # only a few requests at a time however many slots there are
                 "--threads-http", str(slots + 8),
                 "-ctk", kv_type, "-ctv", kv_type,
                 "--host", "127.0.0.1", "--port", str(LLAMA_PORT)]  # fmt: skip
    ours_cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "serve",
                *([args.model] if args.model else []),
                "--port", str(PAGEDLLM_PORT), "--max-num-seqs", str(slots),
                "--kv-cache-dtype", args.kv_cache_dtype]  # fmt: skip
    if args.quantization:
        ours_cmd += ["--quantization", args.quantization]
    servers = {"llama-server": (llama_cmd, LLAMA_PORT), "pagedllm": (ours_cmd, PAGEDLLM_PORT)}

    runs: dict[str, list[list[dict]]] = {name: [] for name in servers}
    for round_index in range(args.rounds):
        for name, (cmd, port) in servers.items():
            print(f"\n#### round {round_index + 1}: {name}", flush=True)
            runs[name].append(_bench(cmd, port, args, concurrency))
    summary = _summary(runs, concurrency)
    for row in summary:
        print(f"concurrency {row['max_concurrency']}: pagedllm / llama-server = "
              f"{row['median_ratio']:.2f}x output tok/s (rounds: "
              f"{', '.join(f'{r:.2f}' for r in row['ratios'])})")  # fmt: skip
    record = build_record("serve_vs_llama_server", args, source.name, summary,
                          runs=runs, commands={k: v[0] for k, v in servers.items()})  # fmt: skip
    write_record(record, args.output_json or "benchmarks/results/serve_vs_llama_server.json")


def _bench(cmd: list[str], port: int, args: argparse.Namespace, concurrency: list[int]) -> list:
    # the server's own log, for when it fails to start or drops requests
    log = open(os.path.join(tempfile.gettempdir(), f"serve_vs_llama_server.{port}.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, proc)
        bench_args = argparse.Namespace(**{
            **vars(args), "base_url": f"http://127.0.0.1:{port}", "concurrency": concurrency,
            "model": args.model or "SmolLM2-135M-Instruct", "served_model_name": None,
            "output_json": os.devnull, "plot": None,
        })  # fmt: skip
        return serve.main(bench_args)["results"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"server on port {port} not ready after {timeout} s")


def _summary(runs: dict[str, list[list[dict]]], concurrency: list[int]) -> list[dict]:
    rows = []
    for level, c in enumerate(concurrency):
        ours = [r[level]["output_tok_s"] for r in runs["pagedllm"]]
        peer = [r[level]["output_tok_s"] for r in runs["llama-server"]]
        ratios = [a / b for a, b in zip(ours, peer)]
        rows.append(dict(max_concurrency=c, pagedllm_output_tok_s=ours,
                         llama_server_output_tok_s=peer, ratios=ratios,
                         median_ratio=statistics.median(ratios)))  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
