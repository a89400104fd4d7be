"""Offline throughput: `pagedllm bench throughput` (pagedllm/benchmarks/throughput.py), kept as a
script for old command lines. Same flags, e.g.

    python benchmarks/throughput.py --num-prompts 64 --min-input 32 --max-input 256 \
        --output-len 128 --quantization none
"""

from __future__ import annotations

import sys

from pagedllm.entrypoints.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "throughput", *sys.argv[1:]]))
