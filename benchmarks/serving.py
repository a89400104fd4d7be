"""Serving benchmark: `pagedllm bench serve` (pagedllm/benchmarks/serve.py), kept as a script
for old command lines. Same flags, e.g.

    pagedllm serve &        # in another shell
    python benchmarks/serving.py --base-url http://127.0.0.1:8000 --concurrency 1 8 32
"""

from __future__ import annotations

import sys

from pagedllm.entrypoints.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "serve", *sys.argv[1:]]))
