"""Distributed inference on one CPU machine: output tok/s of the 64-request offline workload
(random prompts of 32-256 tokens, 128 output tokens each, greedy, ignore_eos, prefix caching off
because the rounds repeat their prompts) under each way of spending two cores:

    tp1   LLM(model, num_threads=2)                            one engine, two threads
    tp1x1 LLM(model, num_threads=1)                            one engine, one thread (not a
                                                               default: it tells DP's gain from
                                                               that of dropping a 2nd thread)
    dp2   LLM(model, data_parallel_size=2, num_threads=1)      two engine cores, a thread each
    dp2ray   the same with data_parallel_backend="ray": the cores are Ray actors (a local Ray
             this process starts, or RAY_ADDRESS), what `-dp 2 --data-parallel-backend ray` costs
    tp2   LLM(model, tensor_parallel_size=2, num_threads=1)    two ranks of one engine (the
                                                               fused CPU stack, each layer cut
                                                               at its two all-reduces)
    tp2eager  the same with enforce_eager=True                 (module calls per layer: what
                                                               -tp ran before the fused cut)
    pp2   LLM(model, pipeline_parallel_size=2, num_threads=1)  two stages, two micro-batches
                                                               in flight (the default)
    pp2sync  the same with one step in flight (the engine core's max_concurrent_batches set to
             1 after it is built: what -pp did before micro-batches), for the bubble

The pipeline bubble: for pp configurations each stage reports the seconds it spent in
execute_model and, of those, waiting in the pipeline's send/receive (Worker.pipeline_stats);
busy = execute - wait, and the stage's idle fraction is 1 - busy / the run's wall time.

A configuration the engine does not accept (an unknown argument, or a ValueError such as "not
implemented") is recorded as unavailable with the reason, so the script runs on every branch.
Configurations take turns each round and keep their best round (a neighbour's load on a shared
machine would otherwise land on one of them); each is built fresh per round (load time not timed)
and gets the same total KV cache budget (data-parallel cores split it).

The all-reduce cost: tensor parallelism adds two all-reduces of [tokens, hidden_size] per layer
per step. `--allreduce` measures one such all-reduce between two processes with torch.distributed
(gloo over loopback, one thread each) at decode batch sizes, and reports 2 x layers x that as the
all-reduce time per step, next to the tp1 step time.

    PYTHONPATH=. python benchmarks/distributed.py --configs tp1 dp2 --allreduce \\
        --output benchmarks/results/distributed_smollm2.json
    PYTHONPATH=. python benchmarks/distributed.py --model 1b ...   # the random 1B Q4_K_M
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from typing import Any

CONFIGS: dict[str, dict[str, int | bool | str]] = {
    "tp1": {"num_threads": 2},
    "tp1x1": {"num_threads": 1},
    "dp2": {"data_parallel_size": 2, "num_threads": 1},
    "dp2ray": {"data_parallel_size": 2, "num_threads": 1, "data_parallel_backend": "ray"},
    "tp2": {"tensor_parallel_size": 2, "num_threads": 1},
    "tp2eager": {"tensor_parallel_size": 2, "num_threads": 1, "enforce_eager": True},
    "pp2": {"pipeline_parallel_size": 2, "num_threads": 1},
    "pp2sync": {"pipeline_parallel_size": 2, "num_threads": 1},
}
ONE_BATCH_IN_FLIGHT = {"pp2sync"}
RANDOM_1B = os.path.join("~", ".cache", "pagedllm", "bench-models", "random-llama-1b-Q4_K_M.gguf")


def build(model: str, name: str, kv_bytes: int) -> Any:
    """The configuration's LLM, or the reason it is unavailable (a string)."""
    from pagedllm import LLM

    kwargs = dict(CONFIGS[name])
    cores = kwargs.get("data_parallel_size", 1)
    try:
        llm = LLM(model, kv_cache_memory=kv_bytes // cores, enable_prefix_caching=False,
                  **kwargs)
        if name in ONE_BATCH_IN_FLIGHT:
            llm.llm_engine.engine_core.engine_core.max_concurrent_batches = 1
        return llm
    except (TypeError, ValueError, NotImplementedError) as e:
        return f"{type(e).__name__}: {e}"


def close(llm: Any) -> None:
    llm.llm_engine.shutdown()
    gc.collect()


def timed_run(llm: Any, prompts: list[dict], params: list[Any], pipeline: bool,
              tensor_parallel: bool = False) -> dict:
    if pipeline or tensor_parallel:
        llm.collective_rpc("pipeline_stats")  # (reset: the warm-up is not counted)
    if tensor_parallel:
        llm.collective_rpc("collective_stats")
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    result = {"seconds": round(seconds, 3), "output_tokens": generated,
              "output_tok_s": round(generated / seconds, 2)}
    if pipeline:
        result["stages"] = [_stage_report(stats, seconds)
                            for stats in llm.collective_rpc("pipeline_stats")]
    elif tensor_parallel:
        result["ranks"] = [_rank_report(steps, collectives, execution) for steps, collectives,
                           execution in zip(llm.collective_rpc("pipeline_stats"),
                                            llm.collective_rpc("collective_stats"),
                                            llm.collective_rpc("execution_stats"))]
    return result


def _rank_report(steps: dict, collectives: dict, execution: dict) -> dict:
    """One TP rank's collectives in the run: per step, and their share of execute_model (the
    seconds include waiting for the slower rank; calls: 2 all-reduces a layer plus the
    embedding's all-reduce and the logits' gather per step)."""
    n = max(1, steps["steps"])
    return {"steps": steps["steps"], "execution": execution["strategy"],
            "collective_calls_per_step": round(collectives["calls"] / n, 1),
            "collective_s_per_step": round(collectives["seconds"] / n, 6),
            "execute_s_per_step": round(steps["execute_seconds"] / n, 6),
            "collective_fraction": round(collectives["seconds"]
                                         / max(1e-9, steps["execute_seconds"]), 3)}


def _stage_report(stats: dict, wall: float) -> dict:
    """One stage's busy and idle time over a run of `wall` seconds."""
    busy = stats["execute_seconds"] - stats["pp_wait_seconds"]
    return {"steps": stats["steps"], "execute_s": round(stats["execute_seconds"], 3),
            "pp_wait_s": round(stats["pp_wait_seconds"], 3), "busy_s": round(busy, 3),
            "idle_fraction": round(1 - busy / wall, 3)}


def _allreduce_worker(rank: int, port: int, shapes: list[tuple[int, int]], iters: int,
                      results: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2,
                            rank=rank)
    timings = {}
    for tokens, hidden in shapes:
        x = torch.randn(tokens, hidden)
        for _ in range(10):
            dist.all_reduce(x)
        samples = []
        for _ in range(iters):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(x)
            samples.append(time.perf_counter() - start)
        timings[f"{tokens}x{hidden}"] = statistics.median(samples)
    if rank == 0:
        results.update(timings)
    dist.destroy_process_group()


def measure_allreduce(hidden: int, tokens: list[int], iters: int = 200) -> dict[str, float]:
    """Median seconds of one fp32 all-reduce of [tokens, hidden] between two processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_allreduce_worker, args=(port, [(t, hidden) for t in tokens], iters, results),
                 nprocs=2, join=True)
        return dict(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct",
                        help=f"a model, or '1b' for {RANDOM_1B} (benchmarks/make_big_gguf.py)")
    parser.add_argument("--configs", nargs="+", default=["tp1", "dp2", "tp2", "pp2"],
                        choices=list(CONFIGS))
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--kv-cache-memory", type=int, default=2 << 30,
                        help="KV cache bytes per configuration (default 2 GiB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--allreduce", action="store_true",
                        help="measure the two-process all-reduce at decode batch sizes")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--baseline", default="tp1",
                        help="the configuration the ratios are relative to (tp1x1 under "
                             "contention: 2-thread timings collapse on a shared machine)")
    args = parser.parse_args()
    model = os.path.expanduser(RANDOM_1B) if args.model == "1b" else args.model

    from pagedllm import SamplingParams
    from pagedllm.benchmarks.datasets import random_requests
    from pagedllm.engine.arg_utils import EngineArgs

    model_config = EngineArgs(model=model).create_engine_config().model
    requests = random_requests(args.num_prompts, (32, 256), (args.output_len, args.output_len),
                               model_config.vocab_size, seed=0)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True)
              for r in requests]
    rounds: dict[str, list[dict]] = {name: [] for name in args.configs}
    unavailable: dict[str, str] = {}
    record: dict = {}
    for round_index in range(args.rounds):
        for name in args.configs:
            if name in unavailable:
                continue
            llm = build(model, name, args.kv_cache_memory)
            if isinstance(llm, str):
                unavailable[name] = llm
                print(f"{name}: unavailable ({llm})", flush=True)
                continue
            llm.generate(prompts[:4], params[:4], use_tqdm=False)  # warm-up
            pipeline = CONFIGS[name].get("pipeline_parallel_size", 1) > 1
            tensor_parallel = CONFIGS[name].get("tensor_parallel_size", 1) > 1
            result = timed_run(llm, prompts, params, pipeline, tensor_parallel)
            result["load_average"] = [round(x, 2) for x in os.getloadavg()]  # (`uptime`)
            rounds[name].append(result)
            close(llm)
            print(f"round {round_index} {name} {rounds[name][-1]}", flush=True)
        record = _record(args, model, model_config, rounds, unavailable)
        _write(args.output, record)  # after every round: a run cut short keeps its rounds
    if args.allreduce:
        record["allreduce"] = _allreduce_report(model_config, record)
        _write(args.output, record)
    summary = {k: record.get(k) for k in ("runs", "ratios_vs_baseline", "unavailable")}
    print(json.dumps(summary, indent=2))
    if "allreduce" in record:
        print(json.dumps(record["allreduce"], indent=2))


def _allreduce_report(model_config: Any, record: dict) -> dict:
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    tokens = [1, 16, 64]
    seconds = measure_allreduce(hidden, tokens)
    report: dict[str, Any] = {"hidden_size": hidden, "num_layers": layers,
                              "one_allreduce_s": seconds, "per_step_s": {}}
    for t in tokens:
        report["per_step_s"][f"{t}_tokens"] = 2 * layers * seconds[f"{t}x{hidden}"]
    tp1 = record.get("runs", {}).get("tp1")
    if tp1:  # a decode step of the whole batch, averaged: seconds / output tokens per request
        steps = tp1["output_tokens"] / max(1, record["workload"]["num_prompts"])
        report["tp1_mean_step_s"] = round(tp1["seconds"] / steps, 5)
    return report


def _record(args: argparse.Namespace, model: str, model_config: Any,
            rounds: dict[str, list[dict]], unavailable: dict[str, str]) -> dict:
    runs = {name: max(results, key=lambda r: r["output_tok_s"])
            for name, results in rounds.items() if results}
    base = runs.get(args.baseline)
    ratios = ({name: round(run["output_tok_s"] / base["output_tok_s"], 3)
               for name, run in runs.items()} if base else {})
    return {
        "benchmark": "distributed", "model": model,
        "quantization": model_config.quantization,
        "workload": {"num_prompts": args.num_prompts, "input_len": [32, 256],
                     "output_len": args.output_len, "kv_cache_bytes": args.kv_cache_memory,
                     "prefix_caching": False},
        "configs": {name: CONFIGS[name] for name in args.configs},
        "runs": runs, "ratios_vs_tp1": ratios if args.baseline == "tp1" else {},
        "baseline": args.baseline, "ratios_vs_baseline": ratios, "unavailable": unavailable,
        "all_rounds": rounds,
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
    }


def _write(path: str | None, record: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
