"""Before/after of the i8-code kernel (lmhead_kernel.py) between two source trees, each run in
its own fresh process (the compiled kernels of two trees cannot share one), alternating A, B, B,
A, ... round by round; per shape, activation dtype and row count the median over rounds of each
tree's best CPU time, the B / A ratio, and whether the two trees' LM head outputs are the same
bits (lmhead_kernel.py --save-outputs).

    PAGEDLLM_NUM_THREADS=1 python benchmarks/lmhead_ab.py --a /tmp/base --b . --rounds 4 \\
        --output-json benchmarks/results/lmhead_kernel_ab_1thread.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lmhead_kernel.py")


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _run(tree: str, extra: list[str], tmp: str, tag: str) -> dict:
    path = os.path.join(tmp, f"{tag}.json")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    subprocess.run([sys.executable, SCRIPT, "--output-json", path, *extra], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    with open(path) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", required=True, help="the before tree")
    parser.add_argument("--b", required=True, help="the after tree")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output-json", required=True)
    parser.add_argument("kernel_args", nargs="*", help="passed to lmhead_kernel.py (after --)")
    args = parser.parse_args()
    record = {"a": args.a, "b": args.b, "uptime_before": _uptime(), "rounds": []}
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tag in ("a", "b"):  # the bits first, and both trees' kernels built
            tree = args.a if tag == "a" else args.b
            _run(tree, ["--reps", "1", "--shapes", "qkv", "--rows", "1", "--save-outputs",
                        os.path.join(tmp, f"{tag}.pt")], tmp, "bits")  # fmt: skip
        a, b = (torch.load(os.path.join(tmp, f"{t}.pt")) for t in ("a", "b"))
        record["same_bits"] = {key: bool(torch.equal(a[key], b[key])) for key in a}
        print("same bits:", record["same_bits"], flush=True)
        for rnd in range(args.rounds):
            for tag in ("a", "b") if rnd % 2 == 0 else ("b", "a"):
                res = _run(args.a if tag == "a" else args.b, args.kernel_args, tmp, tag)
                for shape in res["shapes"]:
                    for key, r in shape["results"].items():
                        name = f"{shape['name']} {key}"
                        times.setdefault(name, {"a": [], "b": []})[tag].append(r["Q8_0_ms"])
            record["rounds"].append(_uptime())
            print("round", rnd, record["rounds"][-1], flush=True)
    record["q8_0_ms"] = {
        name: {"a_median": statistics.median(t["a"]), "b_median": statistics.median(t["b"]),
               "b_over_a": round(statistics.median(t["b"]) / statistics.median(t["a"]), 3),
               "a": t["a"], "b": t["b"]}
        for name, t in times.items()
    }  # fmt: skip
    for name, t in record["q8_0_ms"].items():
        print(f"{name:28s} a {t['a_median']:8.3f} ms  b {t['b_median']:8.3f} ms  b/a "
              f"{t['b_over_a']}")  # fmt: skip
    record["uptime_after"] = _uptime()
    with open(args.output_json, "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
