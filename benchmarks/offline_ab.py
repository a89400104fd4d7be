"""Engine configurations against each other on the 64-request offline workload, each run a fresh
process of benchmarks/profile_offline_steps.py, the configurations alternating round by round (a
shared machine's speed drifts); every run records `uptime`'s load before and after, wall and CPU
output tok/s and its step breakdown, and how many requests' greedy tokens match the first
configuration's of the same round (token for token). A configuration's leading NAME=value words
are environment variables of its process (a kernel's knob), the rest engine flags. With --base
every configuration also runs on another checkout (a change's base: `git archive BASE | tar -x
-C DIR`), named "base:NAME" and listed first, so the first base run is the reference.

    PAGEDLLM_NUM_THREADS=1 python benchmarks/offline_ab.py --rounds 2 \\
        --config fp32kv="" --config fp16kv="--kv-cache-dtype fp16" \\
        --output-json benchmarks/results/offline_ab_kv_cache_dtype_1thread.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import statistics
import sys

from pagedllm.benchmarks.ab import run_json_process
from pagedllm.benchmarks.results import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(words: list[str], args: argparse.Namespace, root: str = ROOT) -> dict:
    """One fresh process of `root`'s profile_offline_steps.py, that checkout's pagedllm."""
    env_words = list(itertools.takewhile(lambda w: re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w), words))
    flags = words[len(env_words):]
    cmd = [sys.executable, os.path.join(root, "benchmarks", "profile_offline_steps.py"),
           "--num-threads", str(args.threads), "--num-prompts", str(args.num_prompts),
           "--clock", args.clock, "--save-tokens", *flags]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": root, "PAGEDLLM_NUM_THREADS": str(args.threads),
           **dict(w.split("=", 1) for w in env_words)}  # fmt: skip
    return run_json_process(cmd, env, cwd=root)


def _matching(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b))


def _median_parts(kinds: list[dict]) -> dict[str, float]:
    """Per part of a step kind (and the whole step), the median over runs of its ms per step
    (a shared machine slows single runs: the median is steadier than the mean)."""
    parts = {"step": [k["ms_per_step"] for k in kinds]}
    for name in kinds[0]["parts_s"]:
        parts[name] = [1000 * k["parts_s"][name] / max(k["steps"], 1) for k in kinds]
    return {name: statistics.median(values) for name, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True,
                        help='NAME="engine flags" (the first is the reference)')  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    parser.add_argument("--base", default=None,
                        help="another checkout: each configuration also runs on it (base:NAME)")
    parser.add_argument("--output-json", required=True)
    args = parser.parse_args()
    configs = [(*c.split("=", 1), ROOT) for c in args.config]
    if args.base:
        configs = [("base:" + n, f, os.path.abspath(args.base)) for n, f, _ in configs] + configs
    names = [n for n, _, _ in configs]
    runs = []
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        tokens = {}
        for name, flags, root in order:
            record = _run(shlex.split(flags), args, root)
            tokens[name] = record.pop("token_ids")
            runs.append({"round": r, "config": name, "flags": flags, **record})
            print(f"round {r} {name:<12} {record['output_tok_s']:7.1f} tok/s wall  "
                  f"{record['output_tok_per_cpu_s']:7.1f} per CPU s  load "
                  f"{record['load_before']} -> {record['load_after']}", flush=True)  # fmt: skip
        for run in runs[-len(configs):]:
            run["requests_matching_reference"] = _matching(tokens[run["config"]], tokens[names[0]])
    summary = {}
    for name in names:
        mine = [x for x in runs if x["config"] == name]
        summary[name] = {
            "best_output_tok_s": max(x["output_tok_s"] for x in mine),
            "best_output_tok_per_cpu_s": max(x["output_tok_per_cpu_s"] for x in mine),
            "requests_matching_reference": [x["requests_matching_reference"] for x in mine],
            "median_ms_per_step": {kind: _median_parts([x["by_kind"][kind] for x in mine])
                                   for kind in mine[0]["by_kind"]},  # fmt: skip
        }
    ref = summary[names[0]]["best_output_tok_per_cpu_s"]
    for name in names:
        summary[name]["cpu_ratio_to_reference"] = summary[name]["best_output_tok_per_cpu_s"] / ref
    print(json.dumps(summary, indent=1), flush=True)
    record = {"benchmark": "offline_ab", "command": " ".join(sys.argv), "threads": args.threads,
              "cpu": cpu_model(), "summary": summary, "runs": runs}  # fmt: skip
    if args.base:
        record["base"] = os.path.abspath(args.base)
    with open(args.output_json, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
