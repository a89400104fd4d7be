"""int16 vs int8 activations vs OpenVINO GenAI in ONE process, alternating runs of the 64-request
offline workload (random token prompts of 32..256 tokens, 128 out, ignore_eos): two LLMs (one
per --quantized-activation-dtype) and OpenVINO's ContinuousBatchingPipeline on the packaged
SmolLM2 Q4_1 GGUF, each warmed up, the order flipping round by round. In one process the runs
are seconds apart, so a shared machine's drift (larger than the effect across processes, see
int8_activations.py's records) mostly cancels in the per-round ratios.

    PAGEDLLM_NUM_THREADS=1 python benchmarks/int8_activations_in_process.py --rounds 3 \
        --output-json benchmarks/results/int8_activations_smollm2_q4_1_1thread_in_process.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.ab import load_average

ENGINES = ("int16", "int8", "openvino")


def _prompts(count: int = 64) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(100, 49000) for _ in range(rng.randint(32, 256))]
            for _ in range(count)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-json", required=True)
    args = parser.parse_args()
    import torch

    from pagedllm.benchmarks.openvino_peer import make_openvino_runner
    from pagedllm.benchmarks.peer_runner import BatchLimits
    from pagedllm.model_executor.model_loader.resolve import resolve_model

    prompts, out_len = _prompts(), 128
    params = SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True)
    llms = {d: LLM(quantized_activation_dtype=d, max_model_len=512, kv_cache_memory="1GiB")
            for d in ("int16", "int8")}  # fmt: skip
    threads = torch.get_num_threads()
    ov = make_openvino_runner(resolve_model(None).file, threads, BatchLimits(128, 2048))

    def run(engine: str) -> float:
        if engine == "openvino":
            return ov.generate(prompts, [out_len] * len(prompts))
        start = time.perf_counter()
        llms[engine].generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return time.perf_counter() - start

    for llm in llms.values():  # warm-up
        llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(max_tokens=4),
                     use_tqdm=False)  # fmt: skip
    ov.generate([prompts[0]], [4])
    runs = []
    for r in range(args.rounds):
        for engine in ENGINES if r % 2 == 0 else ENGINES[::-1]:
            before = load_average()
            elapsed = run(engine)
            runs.append({"round": r, "engine": engine, "output_tok_s": out_len * len(prompts) /
                         elapsed, "elapsed_s": elapsed, "load_before": before,
                         "load_after": load_average()})  # fmt: skip
            print(runs[-1], flush=True)

    def tok_s(engine: str, r: int) -> float:
        return next(x["output_tok_s"] for x in runs if x["engine"] == engine and x["round"] == r)

    best = {e: max(tok_s(e, r) for r in range(args.rounds)) for e in ENGINES}
    summary = {
        "best_tok_s": best,
        "int8_over_int16_per_round": [tok_s("int8", r) / tok_s("int16", r)
                                      for r in range(args.rounds)],
        "int8_over_openvino_per_round": [tok_s("int8", r) / tok_s("openvino", r)
                                         for r in range(args.rounds)],
        "int16_over_openvino_per_round": [tok_s("int16", r) / tok_s("openvino", r)
                                          for r in range(args.rounds)],
    }  # fmt: skip
    print(json.dumps(summary, indent=1))
    record = {"benchmark": "int8_activations_in_process", "threads": threads,
              "openvino": ov.describe(), "summary": summary, "runs": runs}  # fmt: skip
    with open(args.output_json, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
