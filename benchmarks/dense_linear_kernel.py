"""The compiled dense linear (torch.ops.pagedllm.dense_linear) alone, on SmolLM2-135M's matrix
shapes (all 30 layers' weights, so they come from DRAM as in the engine), in GMAC/s per row
count and weight dtype (best of 5; at 1 thread from the thread's CPU time, since the machine is
shared); optionally against another tree's build (--base), alternating processes.

    PAGEDLLM_NUM_THREADS=1 python benchmarks/dense_linear_kernel.py --base /tmp/base --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_SHAPES = [(576 + 2 * 192, 576), (576, 576), (2 * 1536, 576), (576, 1536)]  # qkv, o, gate_up, down
_LAYERS = 30

_RUN = r"""
import json, sys, time, torch
from pagedllm.kernels import cpu_kernels_available
assert cpu_kernels_available()
torch.set_num_threads(int(sys.argv[1]))
# one thread: its own CPU time (the machine is shared; wall time counts the others' turns)
clock = time.thread_time if int(sys.argv[1]) == 1 else time.perf_counter
shapes, layers, rows, dtypes = json.loads(sys.argv[2])
g = torch.Generator().manual_seed(0)
out = {}
for dtype in dtypes:
    ws = [[torch.randn(n, k, generator=g).to(getattr(torch, dtype)) for n, k in shapes]
          for _ in range(layers)]
    for m in rows:
        xs = {k: torch.randn(m, k, generator=g) for _, k in shapes}
        macs = m * sum(n * k for n, k in shapes) * layers
        best = float("inf")
        for _ in range(5):
            t = clock()
            for layer in ws:
                for w in layer:
                    torch.ops.pagedllm.dense_linear(xs[w.shape[1]], w, None)
            best = min(best, clock() - t)
        out[f"{dtype}/M{m}"] = macs / best / 1e9
print(json.dumps(out))
"""


def _run(tree: str, args: argparse.Namespace) -> dict[str, float]:
    spec = json.dumps([_SHAPES, _LAYERS, args.rows, args.dtypes])
    proc = subprocess.run([sys.executable, "-c", _RUN, str(args.threads), spec], cwd="/",
                          env={**os.environ, "PYTHONPATH": tree}, check=True,
                          capture_output=True, text=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="another tree to compare with, alternating")
    parser.add_argument("--change", default=os.path.dirname(os.path.dirname(__file__)) or ".")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 5, 8, 32, 128, 512])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--output-json")
    args = parser.parse_args()
    trees = {"change": os.path.abspath(args.change)}
    if args.base:
        trees["base"] = os.path.abspath(args.base)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for round_index in range(args.rounds):
        names = list(trees) if round_index % 2 == 0 else list(trees)[::-1]
        for name in names:
            runs[name].append(_run(trees[name], args))
            print(f"round {round_index} {name}: {runs[name][-1]}", flush=True)
    best = {name: {key: max(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    report = {"args": vars(args), "load": os.getloadavg(), "gmac_s_best": best, "runs": runs}
    if "base" in best:
        report["ratio"] = {k: best["change"][k] / best["base"][k] for k in best["change"]}
    print(json.dumps({k: report[k] for k in ("gmac_s_best", "ratio") if k in report}, indent=1))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
