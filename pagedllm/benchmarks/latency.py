"""`pagedllm bench latency`: the time to run one batch end to end (vLLM's `bench latency`).

For each batch size: warm-up runs, then --num-iters runs generating --output-len tokens (latency
mean/median/p90/p99), each output token stamped as it reaches the caller (our engine's streamed
step outputs; the peers' streaming hooks). prefill = the time until every request has its first
token, prefill tok/s = batch * input_len / prefill; decode tok/s of a request = its tokens after
the first / (last token's time - first token's time), averaged over the batch's requests
(decode_tok_s_per_request) and times the batch size (decode_tok_s), so every prompt length reports.
An engine that cannot stamp tokens also runs --num-iters 1-token runs, and its decode is
batch * (output_len - 1) / (full - prefill) ("timing": "full_minus_prefill" in the JSON).

Every run draws fresh random prompts (so the prefix cache cannot help) and every engine, ours and
the peers (hf, llamacpp, openvino; the single-stream ones at batch size 1 only), sees the same
prompts; the engines take turns run by run. The step profile (phase, ms/step, %) of our full runs
is printed and saved.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

from pagedllm.benchmarks.datasets import MIN_TOKEN_ID
from pagedllm.benchmarks.engine import EngineRunner
from pagedllm.benchmarks.peers import (
    HFRunner,
    PeerRunner,
    add_peer_args,
    check_peer_args,
    make_peers,
)
from pagedllm.benchmarks.results import (
    ENGINE,
    add_output_args,
    build_record,
    default_output_path,
    ratio_line,
    ratios,
    write_record,
)
from pagedllm.benchmarks.stats import SUBTRACTION, latency_stats, timed_latency_stats
from pagedllm.benchmarks.timing import TimedRun

RATIO_LABELS = {"e2e_tok_s": "latency", "prefill_tok_s": "prefill", "decode_tok_s": "decode"}
"""Ratios are of rates (tok/s), so > 1 means pagedllm is faster; the latency ratio is the peer's
mean latency over ours."""


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    from pagedllm.entrypoints.cli.engine_flags import add_engine_args

    parser.add_argument(
        "--model",
        default=None,
        help="HF directory, .gguf file or name (default: SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="requests in the batch")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help="sweep these batch sizes (overrides --batch-size), e.g. 1 8 32",
    )
    parser.add_argument("--input-len", type=int, default=32, help="prompt tokens per request")
    parser.add_argument("--output-len", type=int, default=128, help="tokens to generate")
    parser.add_argument("--num-iters-warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--num-iters", type=int, default=3, help="timed runs (each kind)")
    add_peer_args(parser, "HF static batch size (default: the batch size)")
    add_output_args(parser)
    add_engine_args(parser)


def main(args: argparse.Namespace) -> dict:
    batch_sizes = args.batch_sizes or [args.batch_size]
    _check_args(args, batch_sizes)
    check_peer_args(args)
    engine = EngineRunner(args)
    _check_fits(engine, args, batch_sizes)
    vocab = len(engine.tokenizer)
    peers = _make_peers(engine, args)
    rows = []
    for batch_size in batch_sizes:
        prompts = _prompt_maker(batch_size, args.input_len, vocab, args.seed)
        runners = {ENGINE: _our_runner(engine)}
        for peer in peers:
            if peer.single_stream and batch_size != 1:
                print(f"{peer.name}: single stream, compared at batch 1 only", flush=True)
                continue
            if isinstance(peer, HFRunner):
                peer.batch_size = args.hf_batch_size or batch_size
            runners[peer.name] = peer.generate_timed
        row = {"batch_size": batch_size,
               "engines": _measure(runners, prompts, args, after_warmup=engine.profiler.reset)}
        row["profile"] = engine.profiler.as_dict()
        print(
            f"\nbatch {batch_size}: step profile of {ENGINE} (full runs)\n"
            f"{engine.profiler.format_table()}",
            flush=True,
        )
        row["ratios"] = _row_ratios(row["engines"])
        _print_row(row)
        rows.append(row)
    described = engine.describe()
    record = build_record("latency", args, described["model"], rows, engine=described,
                          peers={p.name: p.describe() for p in peers})
    _write(record, args, batch_sizes, described["model"])
    return record


def _make_peers(engine: EngineRunner, args: argparse.Namespace) -> list[PeerRunner]:
    n_ctx = args.input_len + args.output_len + 8
    return make_peers(args.peers, engine.source(), engine.config.model, args.hf_batch_size or 1,
                      n_ctx, openvino_precisions=args.openvino_precision,
                      kv_cache_dtype=engine.config.cache.kv_cache_dtype)  # fmt: skip


def _check_args(args: argparse.Namespace, batch_sizes: list[int]) -> None:
    for name, value in (
        ("--input-len", args.input_len),
        ("--output-len", args.output_len),
        ("--num-iters", args.num_iters),
        ("batch size", min(batch_sizes)),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if args.num_iters_warmup < 0:
        raise ValueError(f"--num-iters-warmup must be >= 0, got {args.num_iters_warmup}")


def _check_fits(engine: EngineRunner, args: argparse.Namespace, batch_sizes: list[int]) -> None:
    if max(batch_sizes) > engine.max_num_seqs:
        raise ValueError(
            f"batch size {max(batch_sizes)} > --max-num-seqs {engine.max_num_seqs}: "
            "the batch would not run as one"
        )
    if args.input_len + args.output_len > engine.max_model_len:
        raise ValueError(
            f"--input-len + --output-len = {args.input_len + args.output_len} > "
            f"max_model_len {engine.max_model_len}"
        )


def _prompt_maker(
    batch_size: int, input_len: int, vocab: int, seed: int
) -> Callable[[int], list[list[int]]]:
    """run index -> that run's prompts (fresh per run, the same for every engine)."""

    def make(run: int) -> list[list[int]]:
        rng = random.Random(f"{seed}-{batch_size}-{run}")
        return [
            [rng.randrange(MIN_TOKEN_ID, vocab) for _ in range(input_len)]
            for _ in range(batch_size)
        ]

    return make


Runner = Callable[[list[list[int]], list[int]], TimedRun]


def _our_runner(engine: EngineRunner) -> Runner:
    """engine.generate_timed, with the step profiler on during the full runs (not during 1-token
    ones)."""
    profiler = engine.profiler

    def timed(prompt_ids: list[list[int]], lens: list[int]) -> TimedRun:
        profiler.enabled = lens[0] > 1
        try:
            return engine.generate_timed(prompt_ids, lens)
        finally:
            profiler.enabled = False

    return timed


def _measure(
    runners: dict[str, Runner],
    prompts: Callable[[int], list[list[int]]],
    args: argparse.Namespace,
    after_warmup: Callable[[], None] | None = None,
) -> dict[str, dict]:
    """Each engine's latency stats. The timed runs alternate between the engines (and their
    order flips every run): this machine's speed drifts over minutes, so a block of runs per
    engine would compare different moments. A full run without token times is followed by a
    1-token run of the same engine (its prefill, for the subtraction)."""
    warmup = args.num_iters_warmup
    for run in runners.values():
        for index in range(warmup):
            batch = prompts(index)
            run(batch, [args.output_len] * len(batch))
    if after_warmup is not None:
        after_warmup()
    full: dict[str, list[TimedRun]] = {name: [] for name in runners}
    prefill: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    batch_size = len(prompts(0))
    for i in range(args.num_iters):
        index = warmup + 2 * i
        for name in names if i % 2 == 0 else names[::-1]:
            run = runners[name]
            full[name].append(run(prompts(index), [args.output_len] * batch_size))
            if full[name][-1].token_times is None:
                prefill[name].append(run(prompts(index + 1), [1] * batch_size).elapsed_s)
    return {name: _stats(name, full[name], prefill[name], batch_size, args) for name in names}


def _stats(
    name: str, full: list[TimedRun], prefill_s: list[float], batch_size: int,
    args: argparse.Namespace,
) -> dict:
    if all(run.token_times is not None for run in full):
        return timed_latency_stats(batch_size, args.input_len, args.output_len, full)
    print(f"note: {name} gives no per-token times: decode = full - prefill runs "
          "(n/a when the prefill dominates)", flush=True)
    return latency_stats(batch_size, args.input_len, args.output_len,
                         [run.elapsed_s for run in full], prefill_s)


def _row_ratios(engines: dict[str, dict]) -> dict[str, dict[str, float]]:
    ours = engines[ENGINE]
    return {
        name: ratios(ours, peer, list(RATIO_LABELS))
        for name, peer in engines.items()
        if name != ENGINE
    }


def _print_row(row: dict) -> None:
    print(f"batch {row['batch_size']}:", flush=True)
    for name, s in row["engines"].items():
        lat = s["latency_s"]
        decode = f"{s['decode_tok_s']:8.1f}" if s["decode_tok_s"] is not None else "     n/a"
        how = " (full - prefill runs)" if s.get("timing") == SUBTRACTION else ""
        print(
            f"  {name:<22} latency mean {lat['mean']:7.3f} s  median {lat['median']:7.3f}  "
            f"p90 {lat['p90']:7.3f}  p99 {lat['p99']:7.3f}  | prefill "
            f"{s['prefill_tok_s']:8.1f} tok/s | decode {decode} tok/s{how}",
            flush=True,
        )
    for name, values in row["ratios"].items():
        print(f"  {ratio_line(name, values, RATIO_LABELS)}", flush=True)


def _write(record: dict, args: argparse.Namespace, batch_sizes: list[int], model: str) -> None:
    from pagedllm.benchmarks.results import slug

    workload = (
        f"bs{'-'.join(map(str, batch_sizes))}_in{args.input_len}_out{args.output_len}_"
        f"{slug(str(record['engine']['dtype']))}"
    )
    write_record(record, args.output_json or default_output_path("latency", model, workload))
    if args.plot:
        from pagedllm.benchmarks.plot import plot_latency

        plot_latency(record, args.plot)
