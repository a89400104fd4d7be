"""Resident memory of `pagedllm serve` at start and under a sustained load, against the bound
issue 25 sets: RSS <= 1.3 x (weights + KV cache + 300 MB).

Starts the server (its API process and engine core), waits until it is healthy, then keeps
--concurrency streamed completions in flight for --duration seconds (random token-id prompts,
fresh ones each round, so the prefix cache fills and evicts as it would in service), sampling
the resident set of the whole process tree every --interval seconds.

    python benchmarks/memory_soak.py --duration 600                      # the default model
    python benchmarks/memory_soak.py --model m.gguf --duration 600 -- --max-model-len 4096

Weights: estimate_weight_bytes of the resolved ModelConfig (what the loader keeps resident).
KV cache: the size the engine logs ("KV cache: ... GiB"); it is allocated with torch.empty, so
its pages only count once written: the bound is generous at start and tight once it is full.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from pagedllm.benchmarks.datasets import random_requests
from pagedllm.benchmarks.results import build_record, write_record
from pagedllm.benchmarks.serve_client import make_client, run_requests, served_model_name
from pagedllm.model_executor.model_loader import estimate_weight_bytes
from pagedllm.model_executor.model_loader.config import load_model_config

MIB = 2**20
_KV_LINE = re.compile(r"KV cache: .*?= \d+ tokens, ([\d.]+) (GiB|MiB)")


def tree_rss(pid: int) -> dict[str, int]:
    """Resident bytes of a process and each of its descendants, by role: "api" (the server
    process), "engine" (the engine core, a multiprocessing child), else the child's name and pid.
    Which process a peak belongs to says where to look (the API's per-request state or the
    engine's step buffers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    by_role: dict[str, int] = {}
    for p in procs:
        try:
            rss = p.memory_info().rss
            role = "api" if p.pid == pid else _child_role(p)
        except psutil.NoSuchProcess:
            continue
        by_role[role] = by_role.get(role, 0) + rss
    return by_role


def _child_role(p: psutil.Process) -> str:
    cmdline = " ".join(p.cmdline())
    if "multiprocessing.spawn" in cmdline and "resource_tracker" not in cmdline:
        return "engine"
    return f"{p.name()}:{p.pid}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{open(log_path).read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server not healthy after {timeout_s} s")


def _kv_cache_bytes(log_path: str) -> int:
    with open(log_path) as f:
        for line in f:
            m = _KV_LINE.search(line)
            if m:
                return int(float(m.group(1)) * (2**30 if m.group(2) == "GiB" else MIB))
    raise RuntimeError("the server log has no 'KV cache:' line")


async def _load(url: str, args: argparse.Namespace, vocab: int, stop_at: float) -> int:
    """Rounds of --concurrency requests until stop_at; returns how many completed."""
    client = make_client(None, timeout_s=600)
    done, round_index = 0, 0
    async with client:
        model = await served_model_name(client, url)
        while time.monotonic() < stop_at:
            requests = random_requests(args.concurrency, (args.min_input, args.max_input),
                                       (args.output_len, args.output_len), vocab,
                                       seed=args.seed + round_index)  # fmt: skip
            results, _ = await run_requests(client, f"{url}/v1/completions", model, requests,
                                            float("inf"), args.concurrency, args.seed)  # fmt: skip
            failed = [r for r in results if not r.success]
            if failed:
                raise RuntimeError(f"{len(failed)} requests failed: {failed[0].error}")
            done += len(results)
            round_index += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--min-input", type=int, default=32)
    parser.add_argument("--max-input", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-json", default=None)
    parser.add_argument("server_args", nargs="*", help="more `pagedllm serve` flags (after --)")
    args = parser.parse_args()

    config = load_model_config(args.model)
    weight_bytes = estimate_weight_bytes(config)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
    command = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "serve",
               *([args.model] if args.model else []), "--port", str(port), *args.server_args]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    samples: list[tuple[float, int]] = []
    samples_by_process: list[tuple[float, dict[str, int]]] = []
    try:
        _wait_healthy(url, proc, log.name, timeout_s=600)
        kv_bytes = _kv_cache_bytes(log.name)
        bound = 1.3 * (weight_bytes + kv_bytes + 300 * 10**6)
        start_by_process = tree_rss(proc.pid)
        start_rss = sum(start_by_process.values())
        print(f"weights {weight_bytes / MIB:.0f} MiB, KV cache {kv_bytes / MIB:.0f} MiB, "
              f"bound {bound / MIB:.0f} MiB; RSS at start {start_rss / MIB:.0f} MiB", flush=True)
        t0 = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(args.interval):
                at, by_process = time.monotonic() - t0, tree_rss(proc.pid)
                samples.append((at, sum(by_process.values())))
                samples_by_process.append((at, by_process))
                parts = ", ".join(f"{k} {v / MIB:.0f}" for k, v in sorted(by_process.items()))
                print(f"  {at:6.0f} s  RSS {samples[-1][1] / MIB:7.0f} MiB ({parts})", flush=True)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        completed = asyncio.run(_load(url, args, config.vocab_size, t0 + args.duration))
        stop.set()
        sampler.join()
        end_rss = sum(tree_rss(proc.pid).values())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    peak = max([start_rss, end_rss, *(rss for _, rss in samples)])
    verdict = "within" if peak <= bound else "OVER"
    print(f"{completed} requests in {args.duration:.0f} s; RSS start {start_rss / MIB:.0f} MiB, "
          f"peak {peak / MIB:.0f} MiB, end {end_rss / MIB:.0f} MiB: {verdict} the bound "
          f"{bound / MIB:.0f} MiB (peak / (weights + KV + 300 MB) = "
          f"{peak / (weight_bytes + kv_bytes + 300 * 10**6):.2f})", flush=True)
    result = {
        "weight_bytes": weight_bytes, "kv_cache_bytes": kv_bytes, "bound_bytes": bound,
        "rss_start_bytes": start_rss, "rss_peak_bytes": peak, "rss_end_bytes": end_rss,
        "requests_completed": completed, "samples": samples,
        "start_bytes_by_process": start_by_process, "samples_by_process": samples_by_process,
    }  # fmt: skip
    record = build_record("memory_soak", args, config.model, [result])
    write_record(record, args.output_json or os.path.join("benchmarks", "results",
                                                          "memory_soak.json"))


if __name__ == "__main__":
    main()
