"""Compact K-quant weights (KQuantWeight, PAGEDLLM_COMPACT_KQUANT=1, the default) against the
multiplied-out form (PackedGroupWeight, =0): one process holding both engines, batch 1, a
128-token prompt then 32 new tokens, the two alternating call by call with the order flipping,
and the BEST of --rounds per engine (on a shared machine a descheduled thread inflates a mean or a
median of a few rounds by 20-30 %, both ways: kquant_compact.py's medians swung 0.78-1.32x on the
same build; the minimum is the run least disturbed). Decode ms/token = (32-token call - 1-token
call) / 31; prefill = the 1-token call.

    PAGEDLLM_NUM_THREADS=1 python benchmarks/kquant_ab.py --rounds 8 \
        --output-json benchmarks/results/kquant_ab_1thread.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from pagedllm.benchmarks.ab import load_average
from pagedllm.benchmarks.results import write_record

MODELS = {
    "gemma3-270m-q4_k_m": "gemma-3-270m",
    "llama-1b-q4_k_m": os.path.expanduser(
        "~/.cache/pagedllm/bench-models/random-llama-1b-Q4_K_M.gguf"),
}


def measure(model: str, rounds: int, switch: str = "PAGEDLLM_COMPACT_KQUANT") -> dict:
    from pagedllm import LLM, SamplingParams

    llms = {}
    for form, flag in (("packed", "0"), ("compact", "1")):
        os.environ[switch] = flag  # read while the weights load
        llms[form] = LLM(model, kv_cache_memory="64MiB", max_model_len=512,
                         enable_prefix_caching=False)  # fmt: skip
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    many = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    prompt = [list(range(100, 228))]
    runs: dict[str, dict[str, list[float]]] = {f: {"prefill": [], "decode": []} for f in llms}
    tokens = {}
    for r in range(rounds + 1):  # (round 0: warm-up)
        for form in list(llms) if r % 2 else list(llms)[::-1]:
            start = time.perf_counter()
            llms[form].generate(prompt, one, use_tqdm=False)
            t1 = time.perf_counter() - start
            start = time.perf_counter()
            out = llms[form].generate(prompt, many, use_tqdm=False)
            t32 = time.perf_counter() - start
            tokens[form] = list(out[0].outputs[0].token_ids)
            if r:
                runs[form]["prefill"].append(t1)
                runs[form]["decode"].append((t32 - t1) / 31)
    rec = {form: {f"{k}_ms_best": round(1e3 * min(v), 2) for k, v in kinds.items()}
           | {f"{k}_ms_median": round(1e3 * statistics.median(v), 2) for k, v in kinds.items()}
           for form, kinds in runs.items()}  # fmt: skip
    rec["speedup_best"] = {k: round(rec["packed"][f"{k}_ms_best"] / rec["compact"][f"{k}_ms_best"],
                                    3) for k in ("prefill", "decode")}  # fmt: skip
    rec["greedy_tokens_equal"] = tokens["packed"] == tokens["compact"]
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--switch", default="PAGEDLLM_COMPACT_KQUANT",
                        help="the variable the two forms differ in: PAGEDLLM_COMPACT_Q5 compares "
                        "Q5_0/Q5_1 alone (K-quants compact in both)")  # fmt: skip
    parser.add_argument("--output-json")
    args = parser.parse_args()
    record = {"threads": os.environ.get("PAGEDLLM_NUM_THREADS"), "rounds": args.rounds,
              "switch": args.switch,
              "load_before": load_average(), "models": {}}  # fmt: skip
    for name in args.models:
        record["models"][name] = measure(MODELS[name], args.rounds, args.switch)
        print(name, json.dumps(record["models"][name]), flush=True)
    record["load_after"] = load_average()
    if args.output_json:
        write_record(record, args.output_json)


if __name__ == "__main__":
    main()
