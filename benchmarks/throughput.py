"""Offline throughput: pagedllm `LLM.generate` vs HF transformers `generate` (static batches, left
padding) on the same random prompts, same run. Prints the ratio and writes a JSON result.

    python benchmarks/throughput.py --num-prompts 64 --min-input 32 --max-input 256 --output-len 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from datetime import datetime, timezone

import torch

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def make_prompts(num: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # Skip the lowest ids (special tokens in most vocabularies).
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(num)]


def run_pagedllm(args, prompts) -> dict:
    from pagedllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(args.model, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory,
              max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
              quantization=args.quantization)
    load_s = time.perf_counter() - start
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"engine": "pagedllm", "load_s": load_s, "elapsed_s": elapsed,
            "output_tokens": generated, "output_tok_s": generated / elapsed,
            "total_tok_s": (generated + sum(map(len, prompts))) / elapsed}


def run_hf(args, prompts, model_path: str, gguf_file: str | None) -> dict:
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **kwargs).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    start = time.perf_counter()
    generated = 0
    for i in range(0, len(prompts), args.hf_batch_size):
        batch = prompts[i : i + args.hf_batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=args.output_len, min_new_tokens=args.output_len,
                                 pad_token_id=pad)
        generated += (out.shape[1] - width) * len(batch)
        print(f"  HF batch {i // args.hf_batch_size + 1}: {time.perf_counter() - start:.1f}s",
              flush=True)
    elapsed = time.perf_counter() - start
    return {"engine": "hf_transformers", "batch_size": args.hf_batch_size, "elapsed_s": elapsed,
            "output_tokens": generated, "output_tok_s": generated / elapsed,
            "total_tok_s": (generated + sum(map(len, prompts))) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default="none",
                        help="none: float weights, as HF runs them (auto: native GGUF blocks)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--min-input", type=int, default=32)
    parser.add_argument("--max-input", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-memory", default="2GiB")
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result JSON path")
    args = parser.parse_args()

    from pagedllm.model_executor.model_loader.resolve import resolve_model

    source = resolve_model(args.model)
    from pagedllm.tokenizer.loader import load_tokenizer

    vocab = len(load_tokenizer(source))
    prompts = make_prompts(args.num_prompts, args.min_input, args.max_input, vocab, args.seed)
    results = [run_pagedllm(args, prompts)]
    print(f"pagedllm: {results[0]['output_tok_s']:.1f} output tok/s", flush=True)
    if not args.skip_hf:
        results.append(run_hf(args, prompts, source.path, source.gguf_file))
        ratio = results[0]["output_tok_s"] / results[1]["output_tok_s"]
        print(f"HF transformers: {results[1]['output_tok_s']:.1f} output tok/s; "
              f"pagedllm / HF = {ratio:.2f}x")
    record = {
        "benchmark": "throughput", "model": args.model, "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "python": platform.python_version()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "results": results,
    }
    os.makedirs(RESULTS_DIR, exist_ok=True)
    out = args.out or os.path.join(
        RESULTS_DIR, f"throughput_{datetime.now():%Y%m%d_%H%M%S}.json")
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
