"""Soak: `pagedllm serve` under mixed valid, invalid, aborted and streaming traffic for a long time
(issue 22 asks for 30 minutes at concurrency 64 on SmolLM2).

Every worker loops over a fixed mix of requests:
- valid: completions and chat, streamed and not, random lengths, some with seeds and sampling;
- invalid: bodies that must get a 4xx (bad fields, unknown model, over-long prompts);
- aborted: a stream the client closes after a few chunks.

What is checked and recorded (JSON under benchmarks/results/):
- 5xx answers to valid requests (must be zero), 4xx answers to invalid ones (must be all), any
  transport error;
- the resident set of the server's process tree and the KV cache usage from /metrics at the
  checkpoints (default 5, 15 and 30 minutes), plus the running/waiting counts;
- at the end, once the load stops: the server idles with 0 running requests and 0 % KV usage (no
  leaked blocks), and /health is 200.

    python benchmarks/soak.py --duration 1800 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_soak import _free_port, _wait_healthy, tree_rss  # noqa: E402

from pagedllm.benchmarks.results import (  # noqa: E402
    build_record,
    default_output_path,
    write_record,
)

MIB = 2**20
WORDS = ("the quick brown fox jumps over a lazy dog while paged attention keeps every block of "
         "keys and values in a shared pool and the scheduler batches requests").split()


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    """(kind, outcome) -> count; outcome is the status class or "transport"."""
    valid_5xx: list[str] = field(default_factory=list)
    invalid_not_4xx: list[str] = field(default_factory=list)


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def _valid(rng: random.Random, model: str) -> tuple[str, dict, bool]:
    """A valid request: (path, body, streamed)."""
    sampling = rng.choice([{"temperature": 0.0}, {"temperature": 0.8, "top_p": 0.9},
                           {"temperature": 1.0, "top_k": 20, "seed": rng.randrange(10**6)}])
    max_tokens = rng.randint(1, 48)
    stream = rng.random() < 0.5
    if rng.random() < 0.5:
        body = {"model": model, "prompt": _text(rng, 1, 120), "max_tokens": max_tokens,
                "stream": stream, **sampling}
        return "/v1/completions", body, stream
    body = {"model": model, "max_tokens": max_tokens, "stream": stream, **sampling,
            "messages": [{"role": "user", "content": _text(rng, 1, 60)}]}
    return "/v1/chat/completions", body, stream


def _invalid(rng: random.Random, model: str) -> tuple[str, dict]:
    return rng.choice([
        ("/v1/completions", {"model": model, "prompt": "x", "max_tokens": -3}),
        ("/v1/completions", {"model": model, "prompt": "x", "temperature": "hot"}),
        ("/v1/completions", {"model": "no-such-model", "prompt": "x"}),
        ("/v1/completions", {"model": model, "prompt": " ".join(["word"] * 20000)}),
        ("/v1/chat/completions", {"model": model, "messages": []}),
        ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x"}],
                                  "logprobs": True, "top_logprobs": 10**6}),
        ("/v1/completions", {"model": model, "prompt": [10**9], "max_tokens": 2}),
    ])


async def _worker(client: httpx.AsyncClient, model: str, seed: int, stop_at: float,
                  tally: Tally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        roll = rng.random()
        try:
            if roll < 0.2:
                path, body = _invalid(rng, model)
                response = await client.post(path, json=body)
                tally.counts[("invalid", response.status_code // 100)] += 1
                if response.status_code // 100 != 4:
                    tally.invalid_not_4xx.append(f"{response.status_code} {path} {body}"[:300])
            elif roll < 0.3:
                path, body, _ = _valid(rng, model)
                body = {**body, "stream": True, "max_tokens": 64}
                async with client.stream("POST", path, json=body) as response:
                    chunks = 0
                    async for _ in response.aiter_lines():
                        chunks += 1
                        if chunks >= rng.randint(1, 6):
                            break  # the client goes away mid-stream: the server must abort
                tally.counts[("aborted", response.status_code // 100)] += 1
            else:
                path, body, stream = _valid(rng, model)
                if stream:
                    async with client.stream("POST", path, json=body) as response:
                        async for _ in response.aiter_lines():
                            pass
                else:
                    response = await client.post(path, json=body)
                status = response.status_code
                tally.counts[("valid", status // 100)] += 1
                if status >= 500:
                    tally.valid_5xx.append(f"{status} {path}")
        except httpx.TransportError as e:
            tally.counts[("transport", type(e).__name__)] += 1


def _metrics(url: str) -> dict[str, float]:
    """Each pagedllm sample summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Counter = Counter()
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("pagedllm:"):
                out[sample.name] += sample.value
    return dict(out)


def _snapshot(url: str, pid: int, start: float) -> dict:
    m = _metrics(url)
    return {"minute": round((time.monotonic() - start) / 60, 2),
            "rss_mib": round(sum(tree_rss(pid).values()) / MIB, 1),
            "kv_cache_usage_perc": m.get("pagedllm:kv_cache_usage_perc"),
            "running": m.get("pagedllm:num_requests_running"),
            "waiting": m.get("pagedllm:num_requests_waiting")}


async def _run(url: str, model: str, args: argparse.Namespace, pid: int) -> dict:
    tally = Tally()
    start = time.monotonic()
    stop_at = start + args.duration
    limits = httpx.Limits(max_connections=args.concurrency + 8)
    snapshots = [_snapshot(url, pid, start)]
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        workers = [asyncio.create_task(_worker(client, model, i, stop_at, tally))
                   for i in range(args.concurrency)]
        for checkpoint in args.checkpoints:
            delay = start + checkpoint * 60 - time.monotonic()
            if delay > 0 and checkpoint * 60 <= args.duration:
                await asyncio.sleep(delay)
                snapshots.append(await asyncio.to_thread(_snapshot, url, pid, start))
                print(f"[soak] {json.dumps(snapshots[-1])} {dict(tally.counts)}", flush=True)
        await asyncio.gather(*workers)
    # Idle: every request finished or was aborted; nothing may stay allocated.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        end = _snapshot(url, pid, start)
        if end["running"] == 0 and end["waiting"] == 0 and end["kv_cache_usage_perc"] == 0:
            break
        await asyncio.sleep(1)
    health = httpx.get(f"{url}/health", timeout=30).status_code
    return {"snapshots": snapshots, "idle_end": end, "health_at_end": health,
            "counts": {f"{k[0]}:{k[1]}": v for k, v in sorted(tally.counts.items(),
                                                               key=str)},
            "valid_5xx": tally.valid_5xx[:20], "num_valid_5xx": len(tally.valid_5xx),
            "invalid_not_4xx": tally.invalid_not_4xx[:20],
            "num_invalid_not_4xx": len(tally.invalid_not_4xx)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--checkpoints", type=float, nargs="+", default=[5, 15, 30],
                        help="minutes at which RSS and KV usage are recorded")
    parser.add_argument("--output", default=None)
    parser.add_argument("serve_args", nargs="*", help="extra `pagedllm serve` flags (after --)")
    args = parser.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = os.path.join(tempfile.mkdtemp(prefix="soak"), "server.log")
    cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "serve", args.model,
           "--port", str(port), *args.serve_args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, proc, log_path, 600)
        model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        result = asyncio.run(_run(url, model, args, proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    result.update(model=args.model, duration_s=args.duration, concurrency=args.concurrency,
                  server_log=log_path)
    passed = (result["num_valid_5xx"] == 0 and result["num_invalid_not_4xx"] == 0
              and result["idle_end"]["kv_cache_usage_perc"] == 0
              and result["health_at_end"] == 200)
    result["passed"] = passed
    print(json.dumps(result, indent=2))
    record = build_record("soak", args, args.model, [result])
    path = write_record(record, args.output or default_output_path(
        "soak", args.model, f"c{args.concurrency}_{int(args.duration)}s"))
    print(f"[soak] {'PASSED' if passed else 'FAILED'}; results in {path}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
