"""Build a 1B-class Llama GGUF from random weights, with no network, for benchmarking model sizes
beyond the packaged 135M / 270M models (decode speed needs the shapes and formats, not trained
weights).

Llama 3.2 1B's shapes (hidden 2048, 16 layers, 32 query / 8 KV heads, MLP 8192, tied embeddings)
with SmolLM2's tokenizer (copied from the packaged SmolLM2 GGUF, so prompts tokenize the same):
written as F16 with the `gguf` package (pagedllm/benchmarks/random_gguf.py), then quantized to
Q4_K_M and Q8_0 by llama.cpp's own quantizer through llama-cpp-python. Files that exist are kept.

    python benchmarks/make_big_gguf.py                 # ~/.cache/pagedllm/bench-models/
    python benchmarks/make_big_gguf.py --check         # + load and generate with each engine
    pagedllm bench latency --model ~/.cache/pagedllm/bench-models/random-llama-1b-Q4_K_M.gguf \
        --batch-size 1 --input-len 128 --output-len 64 --peers llamacpp openvino

--check loads every quantized file in pagedllm (quantized kernels, and dequantized to fp32) and in
llama.cpp, generates 16 greedy tokens and checks that every logit is finite, and compares
pagedllm's greedy tokens with HF transformers' (fp32, its own GGUF reader on the same file).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

from pagedllm.benchmarks.random_gguf import LLAMA_1B, smollm2_gguf_path, write_random_llama_gguf

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "pagedllm", "bench-models")
QUANT_TYPES = ("Q4_K_M", "Q8_0")
CHECK_PROMPT = "The history of the Roman Empire began"
CHECK_TOKENS = 16


def _path(cache_dir: str, suffix: str) -> str:
    return os.path.join(cache_dir, f"{LLAMA_1B.name}-{suffix}.gguf")


def build_f16(cache_dir: str) -> str:
    path = _path(cache_dir, "F16")
    if os.path.isfile(path):
        print(f"exists: {path}")
        return path
    start = time.perf_counter()
    write_random_llama_gguf(LLAMA_1B, path, smollm2_gguf_path(), dtype="f16")
    print(f"wrote {path} ({os.path.getsize(path) / 2**30:.2f} GiB) "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
    return path


def quantize(source: str, cache_dir: str, qtype: str, threads: int) -> str:
    """llama.cpp's quantizer (llama_model_quantize), default params: Q4_K_M's mix of Q4_K / Q6_K
    tensors as llama-quantize makes it. Written to a temporary name, renamed when complete."""
    import llama_cpp

    path = _path(cache_dir, qtype)
    if os.path.isfile(path):
        print(f"exists: {path}")
        return path
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = threads
    tmp = f"{path}.partial"
    start = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(source.encode(), tmp.encode(), params)
    if rc != 0:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RuntimeError(f"llama_model_quantize({qtype}) returned {rc}")
    os.replace(tmp, path)
    print(f"wrote {path} ({os.path.getsize(path) / 2**30:.2f} GiB) "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
    return path


def pagedllm_greedy(path: str, prompt_ids: list[int], quantization: str | None = None) -> list[int]:
    """Greedy tokens; fails unless every step's top logprob is finite."""
    from pagedllm import LLM, SamplingParams

    kwargs = {"quantization": quantization} if quantization else {}
    llm = LLM(path, kv_cache_memory="64MiB", max_model_len=256, **kwargs)
    params = SamplingParams(temperature=0, max_tokens=CHECK_TOKENS, ignore_eos=True, logprobs=1)
    out = llm.generate([prompt_ids], params, use_tqdm=False)[0].outputs[0]
    values = [lp.logprob for step in out.logprobs for lp in step.values()]
    assert values and np.isfinite(values).all(), f"pagedllm: non-finite logprobs on {path}"
    del llm
    gc.collect()
    return list(out.token_ids)


def llama_cpp_greedy(path: str, prompt_ids: list[int], threads: int) -> list[int]:
    """Greedy tokens from llama.cpp's logits; fails unless every logit it produced is finite."""
    from llama_cpp import Llama

    # logits_all: llama-cpp-python fills `scores` only then (it samples in C otherwise)
    llm = Llama(model_path=path, n_ctx=256, n_threads=threads, logits_all=True, verbose=False)
    llm.eval(prompt_ids)
    tokens = []
    for _ in range(CHECK_TOKENS):
        logits = llm.scores[llm.n_tokens - 1]
        assert np.isfinite(logits).all(), f"llama.cpp: non-finite logits on {path}"
        tokens.append(int(np.argmax(logits)))
        llm.eval([tokens[-1]])
    llm.close()
    return tokens


def hf_greedy_tokens(path: str, prompt_ids: list[int]) -> list[int]:
    """transformers' own GGUF reader (dequantizes to fp32), greedy with its KV cache."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=CHECK_TOKENS,
                             min_new_tokens=CHECK_TOKENS, do_sample=False)  # fmt: skip
    del model
    gc.collect()
    return out[0, len(prompt_ids):].tolist()


def check(paths: dict[str, str], threads: int) -> bool:
    """Each file in pagedllm (its quantized kernels, and dequantized to fp32), llama.cpp and HF
    transformers; True when pagedllm's greedy tokens equal transformers' both ways."""
    from pagedllm.tokenizer.loader import load_tokenizer

    prompt_ids = load_tokenizer(next(iter(paths.values()))).encode(CHECK_PROMPT)
    ok = True
    for qtype, path in paths.items():
        runs = {
            "pagedllm": pagedllm_greedy(path, prompt_ids),
            "pagedllm dequantized fp32": pagedllm_greedy(path, prompt_ids, quantization="none"),
            "llama.cpp": llama_cpp_greedy(path, prompt_ids, threads),
            "HF transformers fp32": hf_greedy_tokens(path, prompt_ids),
        }
        reference = runs["HF transformers fp32"]
        for name, tokens in runs.items():
            agree = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b),
                         len(reference))  # fmt: skip
            print(f"{qtype} {name:>26}: {tokens} (first {agree}/{CHECK_TOKENS} = HF's)")
        ok &= runs["pagedllm"] == reference == runs["pagedllm dequantized fp32"]
    print("pagedllm = HF transformers on every file" if ok else "pagedllm DIFFERS from HF")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--types", nargs="+", default=list(QUANT_TYPES), choices=QUANT_TYPES)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="for llama.cpp's quantizer and --check's llama.cpp runs")
    parser.add_argument("--check", action="store_true",
                        help="load and generate with pagedllm, llama.cpp and transformers")
    args = parser.parse_args(argv)
    cache_dir = os.path.expanduser(args.cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    source = build_f16(cache_dir)
    paths = {qtype: quantize(source, cache_dir, qtype, args.threads) for qtype in args.types}
    return 0 if not args.check or check(paths, args.threads) else 1


if __name__ == "__main__":
    sys.exit(main())
