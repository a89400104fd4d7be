"""Serving benchmark: N concurrent streaming chat clients against a running `pagedllm serve`
(or any OpenAI-compatible server). Reports TTFT, inter-token latency and output tokens/s for each
concurrency level and writes a JSON result.

    pagedllm serve &        # in another shell
    python benchmarks/serving.py --url http://127.0.0.1:8000/v1 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import datetime, timezone

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"mean": statistics.fmean(ordered), "median": statistics.median(ordered),
            "p90": pick(0.9), "p99": pick(0.99)}


async def one_request(client, model: str, index: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    arrivals: list[float] = []
    completion_tokens = 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Write a story about fox {index}."}],
        max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - start)
        if chunk.usage:
            completion_tokens = chunk.usage.completion_tokens
    itl = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"ttft": arrivals[0] if arrivals else None, "itl": itl,
            "latency": time.perf_counter() - start, "tokens": completion_tokens}


async def run_level(client, model: str, concurrency: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    results = await asyncio.gather(
        *(one_request(client, model, i, max_tokens) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency, "elapsed_s": elapsed, "output_tokens": tokens,
        "output_tok_s": tokens / elapsed,
        "ttft_s": percentiles([r["ttft"] for r in results if r["ttft"] is not None]),
        "itl_s": percentiles([x for r in results for x in r["itl"]]),
        "e2e_s": percentiles([r["latency"] for r in results]),
    }


async def main_async(args) -> list[dict]:
    import openai

    client = openai.AsyncOpenAI(base_url=args.url, api_key=args.api_key)
    model = args.model or (await client.models.list()).data[0].id
    await one_request(client, model, 0, 4)  # warm-up
    levels = []
    for concurrency in args.concurrency:
        level = await run_level(client, model, concurrency, args.max_tokens)
        levels.append(level)
        print(f"concurrency {concurrency:3d}: {level['output_tok_s']:7.1f} output tok/s, "
              f"TTFT median {level['ttft_s']['median'] * 1000:6.0f} ms "
              f"p99 {level['ttft_s']['p99'] * 1000:6.0f} ms, "
              f"ITL median {level['itl_s'].get('median', 0) * 1000:5.1f} ms", flush=True)
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="EMPTY")
    parser.add_argument("--model", default=None, help="default: the server's first model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    levels = asyncio.run(main_async(args))
    os.makedirs(RESULTS_DIR, exist_ok=True)
    out = args.out or os.path.join(RESULTS_DIR, f"serving_{datetime.now():%Y%m%d_%H%M%S}.json")
    with open(out, "w") as f:
        json.dump({"benchmark": "serving", "args": vars(args), "cpus": os.cpu_count(),
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "levels": levels}, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
