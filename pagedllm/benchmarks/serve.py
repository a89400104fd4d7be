"""`pagedllm bench serve`: drive a running OpenAI-compatible server (vLLM's `bench serve`).

Requests are streamed to /v1/completions with token-id prompts, max_tokens and ignore_eos, so the
server makes exactly the dataset's output lengths. Reports TTFT, TPOT, ITL and end-to-end latency
(mean, median, p90, p99), request throughput and output / total token throughput, for one run or
for each level of a --concurrency sweep (each level gets its own prompts, so the server's prefix
cache cannot carry over from one level to the next).

    pagedllm serve &
    pagedllm bench serve --concurrency 1 8 32 --output-len 128
"""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import Any

from pagedllm.benchmarks.datasets import (
    MIN_TOKEN_ID,
    SampleRequest,
    add_dataset_args,
    requests_from_args,
)
from pagedllm.benchmarks.results import (
    add_output_args,
    build_record,
    default_output_path,
    write_record,
)
from pagedllm.benchmarks.serve_client import make_client, run_requests, served_model_name
from pagedllm.benchmarks.stats import serving_stats

DEFAULT_NUM_PROMPTS = 64
"""Per run without --concurrency; a sweep level runs max(2 * concurrency, 8) by default."""


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000",
        help="the server (default http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--endpoint",
        default="/v1/completions",
        choices=["/v1/completions"],
        help="API route (token-id prompts need /v1/completions)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model whose tokenizer makes the prompts (default: the server's first model)",
    )
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="`model` sent in requests (default: the server's first model)",
    )
    parser.add_argument("--api-key", default=None, help="default: $PAGEDLLM_API_KEY")
    parser.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="requests per second, Poisson arrivals (default inf: all at once)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="most requests in flight at once (default: no limit)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=None,
        help="sweep: one run per value as --max-concurrency, e.g. 1 8 32 64",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=3600.0,
        help="seconds a request may wait for its next chunk",
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset and arrival-time seed")
    add_dataset_args(parser, default_num_prompts=None)
    add_output_args(parser)


def main(args: argparse.Namespace) -> dict:
    if args.request_rate <= 0:
        raise ValueError(f"--request-rate must be > 0, got {args.request_rate}")
    record = asyncio.run(_main_async(args))
    _write(record, args)
    return record


def levels(args: argparse.Namespace) -> list[tuple[int | None, int]]:
    """(max_concurrency, num_prompts) of each run."""
    if not args.concurrency:
        return [(args.max_concurrency, args.num_prompts or DEFAULT_NUM_PROMPTS)]
    if min(args.concurrency) < 1:
        raise ValueError(f"--concurrency values must be >= 1, got {args.concurrency}")
    return [(c, args.num_prompts or max(2 * c, 8)) for c in args.concurrency]


async def _main_async(args: argparse.Namespace) -> dict:
    from pagedllm import envs

    base = args.base_url.rstrip("/")
    url = base + args.endpoint
    async with make_client(args.api_key or envs.api_key(), args.request_timeout) as client:
        model = args.served_model_name or await served_model_name(client, base)
        runs = levels(args)
        batches = _split(_load_requests(args, model, sum(n for _, n in runs)), runs)
        await run_requests(client, url, model, [_warmup_request()], math.inf, None, args.seed)
        results = []
        for (concurrency, _), requests in zip(runs, batches):
            outcomes, duration = await run_requests(
                client, url, model, requests, args.request_rate, concurrency, args.seed
            )
            level = {
                "max_concurrency": concurrency,
                "request_rate": _rate(args.request_rate),
                "num_prompts": len(requests),
                **serving_stats(outcomes, duration),
            }
            _print_level(level)
            results.append(level)
    return build_record(
        "serve", args, args.model or model, results, base_url=base, served_model_name=model
    )


def _load_requests(args: argparse.Namespace, model: str, num: int) -> list[SampleRequest]:
    from pagedllm.tokenizer.loader import load_tokenizer

    tokenizer = load_tokenizer(args.model or model)
    return requests_from_args(args, tokenizer, num=num)


def _split(
    requests: list[SampleRequest], runs: list[tuple[int | None, int]]
) -> list[list[SampleRequest]]:
    out, start = [], 0
    for _, n in runs:
        out.append(requests[start : start + n])
        start += n
    return out


def _warmup_request() -> SampleRequest:
    return SampleRequest([MIN_TOKEN_ID + i % 50 for i in range(16)], 4)


def _rate(rate: float) -> float | str:
    return "inf" if math.isinf(rate) else rate


def _print_level(level: dict[str, Any]) -> None:
    c = level["max_concurrency"]
    print(
        f"\n==== concurrency {c if c else 'unlimited'}, request rate {level['request_rate']} ====",
        flush=True,
    )
    errors = f"  ({'; '.join(level['errors'])})" if level["errors"] else ""
    print(f"requests ok / failed      {level['completed']} / {level['failed']}{errors}")
    print(f"duration                  {level['duration_s']:.2f} s")
    print(f"request throughput        {level['request_throughput']:.2f} req/s")
    print(
        f"output token throughput   {level['output_tok_s']:.1f} tok/s "
        f"({level['output_tokens']} tokens)"
    )
    print(f"total token throughput    {level['total_tok_s']:.1f} tok/s")
    print(f"{'ms':<10}{'mean':>10}{'median':>10}{'p90':>10}{'p99':>10}")
    for name in ("ttft", "tpot", "itl", "e2e"):
        s = level[f"{name}_ms"]
        print(
            f"{name.upper():<10}{s['mean']:>10.1f}{s['median']:>10.1f}{s['p90']:>10.1f}"
            f"{s['p99']:>10.1f}",
            flush=True,
        )


def _write(record: dict, args: argparse.Namespace) -> None:
    sweep = "-".join(str(r["max_concurrency"] or "all") for r in record["results"])
    workload = f"{args.dataset_name}_c{sweep}_rate{_rate(args.request_rate)}"
    write_record(
        record, args.output_json or default_output_path("serve", record["model"], workload)
    )
    if args.plot:
        from pagedllm.benchmarks.plot import plot_serve

        plot_serve(record, args.plot)
