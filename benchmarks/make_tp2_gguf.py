"""A random SmolLM2-class Llama GGUF whose heads split over 2 ranks, for the -tp 2 benchmarks
(SmolLM2-135M's 9 query / 3 KV heads do not divide by 2): hidden 512, 30 layers, 8 query / 4 KV
heads of 64, MLP 1536, SmolLM2's vocabulary and tokenizer (~125 M parameters), written as F16
by the `gguf` package and quantized to Q4_1 (the packaged SmolLM2's type) by llama.cpp's own
quantizer through llama-cpp-python. A file that exists is kept.

    PYTHONPATH=. python benchmarks/make_tp2_gguf.py      # prints the Q4_1 file's path
"""

from __future__ import annotations

import os

from pagedllm.benchmarks.random_gguf import (
    RandomLlamaSpec,
    smollm2_gguf_path,
    write_random_llama_gguf,
)

SMOLLM2_TP2 = RandomLlamaSpec(name="random-llama-smollm2-tp2", hidden_size=512, num_layers=30,
                              num_heads=8, num_kv_heads=4, intermediate_size=1536,
                              context_length=2048, rope_theta=100000.0)  # fmt: skip
PATH = os.path.join("~", ".cache", "pagedllm", "bench-models", f"{SMOLLM2_TP2.name}-Q4_1.gguf")


def make(path: str = PATH) -> str:
    import llama_cpp

    path = os.path.expanduser(path)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f16 = path.removesuffix("-Q4_1.gguf") + "-F16.gguf"
    if not os.path.exists(f16):
        write_random_llama_gguf(SMOLLM2_TP2, f16, smollm2_gguf_path())
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1
    tmp = path + ".tmp"
    rc = llama_cpp.llama_model_quantize(f16.encode(), tmp.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize(Q4_1) returned {rc}")
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    print(make())
