"""Decode speed and memory of weight/KV quantization on one model, each config in a fresh
process (so peak RSS is its own): single-stream decode tok/s, batched decode tok/s, peak RSS,
resident memory (VmRSS) once loaded and after generating, the KV cache's bytes, and the resident
memory of a bare `import torch, transformers` (the runtime every config pays; in its own process).

    python benchmarks/quantization.py --model SmolLM2-135M-Instruct \
        --configs fp32 bf16 int8 int8-bf16 gguf gguf-bf16 --output-json results.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

CONFIGS = {
    "fp32": dict(dtype="float32", quantization="none"),
    "bf16": dict(dtype="bfloat16", quantization="none"),
    "int8": dict(dtype="float32", quantization="int8"),
    "int8-bf16": dict(dtype="bfloat16", quantization="int8"),
    "int4": dict(dtype="float32", quantization="int4"),
    "gguf": dict(dtype="float32", quantization="gguf"),
    "gguf-bf16": dict(dtype="bfloat16", quantization="gguf"),
    "gguf-kv-int8": dict(dtype="float32", quantization="gguf", kv_cache_dtype="int8"),
}


def _decode_rate(llm, prompts, max_tokens: int) -> float:
    from pagedllm import SamplingParams

    def run(n: int) -> float:
        params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    run(4)  # warm up
    prefill = run(1)
    total = run(max_tokens)
    return len(prompts) * (max_tokens - 1) / (total - prefill)


def _measure(name: str, args, queue) -> None:
    import random

    import torch

    from pagedllm import LLM

    torch.set_num_threads(args.threads)
    llm = LLM(args.model, kv_cache_memory=args.kv_cache_memory, max_model_len=512,
              max_num_seqs=args.batch, **CONFIGS[name])  # fmt: skip
    start_rss_mib = _resident_mib()  # loaded, before any request
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 10000) for _ in range(32)] for _ in range(args.batch)]
    single = _decode_rate(llm, prompts[:1], args.tokens)
    batched = _decode_rate(llm, prompts, args.tokens // 2)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kv_bytes = llm.llm_engine.engine_core.engine_core.kv_cache_bytes
    queue.put(dict(config=name, single_tok_s=single, batched_tok_s=batched, peak_rss_mib=rss_mib,
                   start_rss_mib=start_rss_mib, rss_mib=_resident_mib(),
                   kv_cache_mib=kv_bytes / 2**20))  # fmt: skip


def _resident_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _runtime_baseline(_args, queue) -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    queue.put(dict(config="import torch, transformers", rss_mib=_resident_mib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--configs", nargs="+", default=["fp32", "bf16", "int8", "gguf"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--kv-cache-memory", default="128MiB")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")

    def in_fresh_process(target, *target_args) -> dict:
        queue = ctx.Queue()
        proc = ctx.Process(target=target, args=(*target_args, args, queue))
        proc.start()
        result = queue.get()
        proc.join()
        return result

    baseline = in_fresh_process(_runtime_baseline)
    print(f"{baseline['config']}: {baseline['rss_mib']:.0f} MiB resident", flush=True)
    results = []
    for name in args.configs:
        r = in_fresh_process(_measure, name)
        results.append(r)
        print(f"{name:14s} single {r['single_tok_s']:7.1f} tok/s   batch {args.batch} "
              f"{r['batched_tok_s']:7.1f} tok/s   peak RSS {r['peak_rss_mib']:6.0f} MiB   "
              f"RSS at start {r['start_rss_mib']:6.0f} / after {r['rss_mib']:6.0f} MiB "
              f"(KV cache {r['kv_cache_mib']:.0f} MiB)", flush=True)
    if args.output_json:
        from pagedllm.benchmarks.results import build_record, write_record

        write_record(build_record("quantization", args, args.model, results,
                                  runtime_baseline=baseline), args.output_json)  # fmt: skip
    else:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
