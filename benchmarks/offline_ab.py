"""Engine configurations against each other on the 64-request offline workload, each run a fresh
process of benchmarks/profile_offline_steps.py, the configurations alternating round by round (a
shared machine's speed drifts); every run records `uptime`'s load before and after, wall and CPU
output tok/s and its step breakdown, and how many requests' greedy tokens match the first
configuration's of the same round (token for token). A configuration's leading NAME=value words
are environment variables of its process (a kernel's knob), the rest engine flags.

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
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _run(words: list[str], args: argparse.Namespace) -> dict:
    env_words = list(itertools.takewhile(lambda w: re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w), words))
    flags = words[len(env_words):]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "profile_offline_steps.py"),
               "--num-threads", str(args.threads), "--num-prompts", str(args.num_prompts),
               "--clock", args.clock, "--save-tokens", *flags,
               "--output-json", out.name]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": ROOT, "PAGEDLLM_NUM_THREADS": str(args.threads),
               **dict(w.split("=", 1) for w in env_words)}  # fmt: skip
        before = _load()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        after = _load()
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        record = json.load(open(out.name))
    record["load_before"], record["load_after"] = before, after
    return record


def _matching(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True,
                        help='NAME="engine flags" (the first is the reference)')  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    parser.add_argument("--output-json", required=True)
    args = parser.parse_args()
    configs = [c.split("=", 1) for c in args.config]
    names = [n for n, _ in configs]
    runs = []
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        tokens = {}
        for name, flags in order:
            record = _run(shlex.split(flags), args)
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
        }
    ref = summary[names[0]]["best_output_tok_per_cpu_s"]
    for name in names:
        summary[name]["cpu_ratio_to_reference"] = summary[name]["best_output_tok_per_cpu_s"] / ref
    print(json.dumps(summary, indent=1), flush=True)
    record = {"benchmark": "offline_ab", "command": " ".join(sys.argv), "threads": args.threads,
              "cpu": _cpu_model(), "summary": summary, "runs": runs}  # fmt: skip
    with open(args.output_json, "w") as f:
        json.dump(record, f, indent=1)


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f
                     if line.startswith("model name")), "?")  # fmt: skip


if __name__ == "__main__":
    main()
