"""How far a KV cache dtype moves the 64-request offline workload's greedy outputs from the
model dtype's cache ("auto"): requests whose generated tokens are identical, where the others
first differ, and, teacher-forced over each request's prompt plus the "auto" cache's completion,
the distance of the completion tokens' logprobs (prompt_logprobs, so every dtype scores the same
token streams) and how often its argmax picks the same token. One process, one engine per dtype.

    PAGEDLLM_NUM_THREADS=1 python benchmarks/kv_cache_accuracy.py --kv-cache-dtypes fp16 int8 \\
        --output-json benchmarks/results/kv_cache_accuracy_smollm2_q4_1.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics

from pagedllm import SamplingParams
from pagedllm.benchmarks.datasets import add_dataset_args, requests_from_args
from pagedllm.benchmarks.engine import EngineRunner
from pagedllm.entrypoints.cli.engine_flags import add_engine_args


def _run(args: argparse.Namespace, kv_dtype: str, forced: list[list[int]] | None):
    engine_args = copy.copy(args)
    engine_args.kv_cache_dtype = kv_dtype
    engine = EngineRunner(engine_args)
    requests = requests_from_args(args, engine.tokenizer, max_model_len=engine.max_model_len)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    greedy = [SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True)
              for r in requests]  # fmt: skip
    outputs = [o.outputs[0].token_ids for o in engine.llm.generate(prompts, greedy, use_tqdm=False)]
    if forced is None:
        forced = outputs
    scored = [{"prompt_token_ids": r.prompt_token_ids + list(f)} for r, f in zip(requests, forced)]
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    logprobs, top1 = [], []
    for r, f, out in zip(requests, forced, engine.llm.generate(scored, params, use_tqdm=False)):
        rows = out.prompt_logprobs[r.prompt_len :]  # the completion's positions
        logprobs.append([row[t].logprob for row, t in zip(rows, f)])
        top1.append([max(row.items(), key=lambda kv: kv[1].logprob)[0] for row in rows])
    return [list(o) for o in outputs], logprobs, top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--kv-cache-dtypes", nargs="+", default=["fp16", "int8"])
    parser.add_argument("--output-json", required=True)
    add_dataset_args(parser, default_num_prompts=64)
    add_engine_args(parser)
    args = parser.parse_args()
    ref_out, ref_lp, ref_top1 = _run(args, "auto", None)
    record = {"benchmark": "kv_cache_accuracy", "reference": "auto",
              "load_avg_before": [round(x, 2) for x in os.getloadavg()], "dtypes": {}}  # fmt: skip
    for dtype in args.kv_cache_dtypes:
        out, lp, top1 = _run(args, dtype, ref_out)
        diffs = [abs(a - b) for x, y in zip(lp, ref_lp) for a, b in zip(x, y)]
        first = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None)
                 for x, y in zip(out, ref_out)]  # fmt: skip
        same_top1 = sum(a == b for x, y in zip(top1, ref_top1) for a, b in zip(x, y))
        record["dtypes"][dtype] = {
            "requests_identical": sum(f is None for f in first),
            "num_requests": len(out),
            "first_difference_at": sorted(f for f in first if f is not None),
            "teacher_forced_positions": len(diffs),
            "logprob_abs_diff_mean": statistics.fmean(diffs),
            "logprob_abs_diff_median": statistics.median(diffs),
            "logprob_abs_diff_p99": sorted(diffs)[int(0.99 * (len(diffs) - 1))],
            "logprob_abs_diff_max": max(diffs),
            "teacher_forced_argmax_agreement": same_top1 / len(diffs),
        }
        print(dtype, json.dumps(record["dtypes"][dtype]), flush=True)
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    record["args"] = {k: v for k, v in vars(args).items()
                      if isinstance(v, (str, int, float, bool, list, type(None)))}  # fmt: skip
    with open(args.output_json, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
