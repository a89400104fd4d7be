"""`pagedllm bench throughput`: offline `LLM.generate` over a whole dataset (vLLM's
`bench throughput`): requests/s, output tok/s and total (prompt + output) tok/s, with the same
requests run by the peers in the same process: hf in static batches of --hf-batch-size, llamacpp
one by one, openvino through its ContinuousBatchingPipeline with every request at once and our
--max-num-seqs / --max-num-batched-tokens. Each request makes exactly its output length (greedy,
ignore_eos); the step profile of our run is printed and saved.
"""

from __future__ import annotations

import argparse

from pagedllm.benchmarks.datasets import SampleRequest, add_dataset_args, requests_from_args
from pagedllm.benchmarks.engine import EngineRunner
from pagedllm.benchmarks.peers import (
    BatchLimits,
    PeerRunner,
    add_peer_args,
    check_peer_args,
    make_peers,
    warm_up,
)
from pagedllm.benchmarks.results import (
    ENGINE,
    add_output_args,
    build_record,
    default_output_path,
    ratio_line,
    ratios,
    slug,
    write_record,
)
from pagedllm.benchmarks.stats import throughput_stats

DEFAULT_HF_BATCH_SIZE = 32
RATIO_LABELS = {
    "output_tok_s": "output tok/s",
    "total_tok_s": "total tok/s",
    "requests_per_s": "requests/s",
}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    from pagedllm.entrypoints.cli.engine_flags import add_engine_args

    parser.add_argument(
        "--model",
        default=None,
        help="HF directory, .gguf file or name (default: SmolLM2-135M-Instruct)",
    )
    add_dataset_args(parser, default_num_prompts=64)
    add_peer_args(parser, f"HF static batch size (default {DEFAULT_HF_BATCH_SIZE})")
    add_output_args(parser)
    add_engine_args(parser)


def main(args: argparse.Namespace) -> dict:
    check_peer_args(args)  # before our run: the peers load after it
    engine = EngineRunner(args)
    requests = requests_from_args(args, engine.tokenizer, max_model_len=engine.max_model_len)
    results = [_run(engine, requests, profile=True)]
    print(f"\nstep profile of {ENGINE}:\n{engine.profiler.format_table()}", flush=True)
    results[0]["profile"] = engine.profiler.as_dict()
    peers = _make_peers(engine, args, requests)
    for peer in peers:
        results.append(_run(peer, requests))
    ours = results[0]
    for result in results[1:]:
        result["ratios"] = ratios(ours, result, list(RATIO_LABELS))
    _print_results(results)
    described = engine.describe()
    record = build_record(
        "throughput",
        args,
        described["model"],
        results,
        engine=described,
        peers={p.name: p.describe() for p in peers},
        workload=_workload(requests),
    )
    _write(record, args, described["model"])
    return record


def _make_peers(
    engine: EngineRunner, args: argparse.Namespace, requests: list[SampleRequest]
) -> list[PeerRunner]:
    n_ctx = max(r.prompt_len + r.output_len for r in requests) + 8
    batch = args.hf_batch_size or DEFAULT_HF_BATCH_SIZE
    scheduler = engine.config.scheduler
    limits = BatchLimits(scheduler.max_num_seqs, scheduler.max_num_batched_tokens)
    return make_peers(args.peers, engine.source(), engine.config.model, batch, n_ctx, limits,
                      args.openvino_precision, engine.config.cache.kv_cache_dtype)


def _run(
    runner: EngineRunner | PeerRunner, requests: list[SampleRequest], profile: bool = False
) -> dict:
    prompts = [r.prompt_token_ids for r in requests]
    lens = [r.output_len for r in requests]
    warm_up(runner, requests[0].prompt_len)
    print(f"{runner.name}: {len(requests)} requests ...", flush=True)
    if profile and isinstance(runner, EngineRunner):
        runner.profiler.reset()
        runner.profiler.enabled = True
    try:
        elapsed = runner.generate(prompts, lens)
    finally:
        if isinstance(runner, EngineRunner):
            runner.profiler.enabled = False
    stats = throughput_stats([(r.prompt_len, r.output_len) for r in requests], elapsed)
    return {"engine": runner.name, **stats}


def _workload(requests: list[SampleRequest]) -> dict:
    inputs, outputs = [r.prompt_len for r in requests], [r.output_len for r in requests]
    return {
        "num_requests": len(requests),
        "input_len_min": min(inputs),
        "input_len_max": max(inputs),
        "output_len_min": min(outputs),
        "output_len_max": max(outputs),
    }


def _print_results(results: list[dict]) -> None:
    for r in results:
        print(
            f"{r['engine']:<22} {r['requests_per_s']:7.2f} requests/s  "
            f"{r['output_tok_s']:8.1f} output tok/s  {r['total_tok_s']:8.1f} total tok/s  "
            f"({r['elapsed_s']:.2f} s)",
            flush=True,
        )
    for r in results[1:]:
        print(
            ratio_line(r["engine"], {"output_tok_s": r["ratios"]["output_tok_s"]}, RATIO_LABELS),
            flush=True,
        )


def _write(record: dict, args: argparse.Namespace, model: str) -> None:
    w = record["workload"]
    workload = (
        f"{args.dataset_name}_n{w['num_requests']}_in{w['input_len_min']}-"
        f"{w['input_len_max']}_out{w['output_len_min']}-{w['output_len_max']}_"
        f"{slug(str(record['engine']['dtype']))}"
    )
    write_record(record, args.output_json or default_output_path("throughput", model, workload))
    if args.plot:
        from pagedllm.benchmarks.plot import plot_throughput

        plot_throughput(record, args.plot)
