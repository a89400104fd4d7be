"""What cutting the fused CPU stack at its all-reduce points costs by itself, on one rank: the
same engine's decode with the stack's one-call `forward` vs its tensor-parallel halves
(`begin_step / attention_partial / mlp_partial / end_step`, 2 x layers + 2 calls a step) with an
identity all-reduce. The difference is the Python round trip per half, which a collective called
from C++ (linking c10d) would save; the gloo all-reduce itself (benchmarks/distributed.py
--allreduce, and its tp2 runs' collective_s_per_step) is paid either way. Also checks that the
halves give the same greedy tokens and logprob bits as the one call.

    PAGEDLLM_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fused_tp_split.py --batch-sizes 1 32
"""

from __future__ import annotations

import argparse
import json
import os
import time

from pagedllm import LLM, SamplingParams
from pagedllm.worker.fused_cpu_stack import build_fused_cpu_stack


def _identity(x):
    return x


def run(llm: LLM, prompts: list[list[int]], max_tokens: int) -> tuple[float, list]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=1)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    traces = [(o.outputs[0].token_ids, [s[t].logprob for s, t in
                                       zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
              for o in outputs]
    return seconds, traces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    llm = LLM(args.model, kv_cache_memory="256MiB", max_model_len=1024,
              enable_prefix_caching=False)
    model = llm.llm_engine.engine_core.engine_core.executor.driver_worker.model.model
    whole = model.layer_runner
    split = build_fused_cpu_stack(model.layers, all_reduce=_identity)
    result: dict = {"model": args.model, "num_layers": len(model.layers),
                    "load_average": os.getloadavg(), "batches": {}}
    for batch in args.batch_sizes:
        prompts = [[(17 * i + 5 * j) % 4000 + 10 for j in range(32)] for i in range(batch)]
        best = {"whole": float("inf"), "split": float("inf")}
        traces = {}
        for _ in range(args.rounds):  # alternating, best of each
            for name, runner in (("whole", whole), ("split", split)):
                model.layer_runner = runner
                seconds, traces[name] = run(llm, prompts, args.output_len)
                best[name] = min(best[name], seconds)
        steps = args.output_len  # (one prefill step + output_len - 1 decode steps)
        result["batches"][batch] = {
            "whole_s": round(best["whole"], 4), "split_s": round(best["split"], 4),
            "split_overhead_per_step_ms": round((best["split"] - best["whole"]) / steps * 1e3, 3),
            "ratio": round(best["split"] / best["whole"], 3),
            "identical_bits": traces["whole"] == traces["split"],
        }
        print(batch, result["batches"][batch], flush=True)
    model.layer_runner = whole
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
