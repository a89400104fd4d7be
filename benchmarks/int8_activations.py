"""--quantized-activation-dtype int16 against int8 against OpenVINO GenAI, alternating fresh
processes round by round (a shared machine's speed drifts): the 64-request offline workload
(`pagedllm bench throughput`, random prompts of 32..256 tokens, 128 out; OpenVINO's
ContinuousBatchingPipeline) and single-stream decode (`pagedllm bench latency` at batch 1;
OpenVINO's LLMPipeline). Every run records `uptime`'s load average before and after it.

    python benchmarks/int8_activations.py --threads 1 --rounds 3 \
        --output-json benchmarks/results/int8_activations_smollm2_q4_1_1thread.json

--engine-flags adds engine flags to every run of ours (e.g. "--kv-cache-dtype fp16").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys

from pagedllm.benchmarks.ab import run_json_process
from pagedllm.benchmarks.results import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = ("int16", "int8", "openvino")


def _run(kind: str, engine: str, args: argparse.Namespace) -> dict:
    """One fresh process: our engine with `engine` activations, or (engine "openvino") the peer
    beside an int16 run of ours (bench runs ours first; only the peer's figure is kept)."""
    dtype = "int16" if engine == "openvino" else engine
    peers = "openvino" if engine == "openvino" else "none"
    if kind == "throughput":
        shape = ["--num-prompts", str(args.num_prompts)]
    else:
        shape = ["--batch-size", "1", "--input-len", "32", "--output-len", "128",
                 "--num-iters", "3", "--num-iters-warmup", "1"]  # fmt: skip
    cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "bench", kind, *shape,
           "--peers", peers, "--num-threads", str(args.threads),
           "--quantized-activation-dtype", dtype, *shlex.split(args.engine_flags)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT, "PAGEDLLM_NUM_THREADS": str(args.threads)}
    record = run_json_process(cmd, env, cwd=ROOT)
    before, after = record["load_before"], record["load_after"]
    results = record["results"]
    name = "openvino_genai" if engine == "openvino" else "pagedllm"
    if kind == "throughput":  # one row per engine
        row = next(r for r in results if r["engine"] == name)
        figure = row["output_tok_s"]
    else:  # one row per batch size, the engines inside
        row = results[0]["engines"][name]
        figure = row["decode_tok_s"]
    print(f"{kind:<10} {engine:<8} {figure:8.1f} tok/s  load {before} -> {after}", flush=True)
    return {"kind": kind, "engine": engine, "tok_s": figure, "load_before": before,
            "load_after": after, "result": row}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--kinds", nargs="+", default=["throughput", "latency"])
    parser.add_argument("--engine-flags", default="",
                        help="more engine flags for our runs, e.g. '--kv-cache-dtype fp16'")
    parser.add_argument("--output-json", required=True)
    args = parser.parse_args()
    runs = []
    for r in range(args.rounds):
        order = ENGINES if r % 2 == 0 else ENGINES[::-1]
        for kind in args.kinds:
            for engine in order:
                runs.append({"round": r, **_run(kind, engine, args)})
    summary = {}
    for kind in args.kinds:
        best = {e: max(x["tok_s"] for x in runs if x["kind"] == kind and x["engine"] == e)
                for e in ENGINES}  # fmt: skip
        per_round = [{e: next(x["tok_s"] for x in runs if x["kind"] == kind and x["engine"] == e
                              and x["round"] == r) for e in ENGINES}
                     for r in range(args.rounds)]  # fmt: skip
        summary[kind] = {
            "best_tok_s": best,
            "int8_over_int16_best": best["int8"] / best["int16"],
            "int8_over_openvino_best": best["int8"] / best["openvino"],
            "int16_over_openvino_best": best["int16"] / best["openvino"],
            "int8_over_int16_per_round": [p["int8"] / p["int16"] for p in per_round],
            "int8_over_openvino_per_round": [p["int8"] / p["openvino"] for p in per_round],
        }
        print(kind, json.dumps(summary[kind], indent=1), flush=True)
    record = {
        "benchmark": "int8_activations",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {"cpu": cpu_model(), "logical_cores": os.cpu_count(),
                    "platform": platform.platform()},  # fmt: skip
        "threads": args.threads,
        "engine_flags": args.engine_flags,
        "summary": summary,
        "runs": runs,
    }
    with open(args.output_json, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
