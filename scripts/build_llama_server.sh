#!/usr/bin/env bash
# Builds llama.cpp's llama-server (and llama-batched-bench) for the serving comparison
# (benchmarks/serve_vs_llama_server.py). The source is llama-cpp-python's sdist from PyPI, so it
# is the same llama.cpp as the in-process peer. ~10 minutes on 2 cores; optional, never needed
# by the tests. Binaries land in ${PAGEDLLM_CACHE_DIR:-~/.cache/pagedllm}/llama.cpp/.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
OUT="${PAGEDLLM_CACHE_DIR:-$HOME/.cache/pagedllm}/llama.cpp"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
tar xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON > "$WORK/cmake.log"
cmake --build "$SRC/build" -j "$(nproc)" --target llama-server llama-batched-bench
mkdir -p "$OUT"
cp "$SRC/build/bin/llama-server" "$SRC/build/bin/llama-batched-bench" "$OUT/"
echo "built: $OUT/llama-server $OUT/llama-batched-bench"
