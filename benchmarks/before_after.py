"""A change's speed against its base, on three workloads, in alternating fresh processes:

  decode_b1       single-stream decode tok/s (32-token prompt, 128 tokens; best of 3)
  prefill_512     one 512-token prompt, tok/s (best of 3)
  64req_out_tok_s 64 requests of 32..256 random prompt tokens, 128 tokens each, all at once

Both trees run the same prompts; each round runs one process per (tree, config), the trees'
order flipping round by round (this VM's speed drifts by up to ~1.5x over minutes).

    git worktree add /tmp/base <base-commit>
    python benchmarks/before_after.py --base /tmp/base --configs gguf none --rounds 2 \
        [--env ATEN_CPU_CAPABILITY=avx2] --output-json benchmarks/results/before_after.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time

WORKLOADS = ("decode_b1", "prefill_512", "64req_out_tok_s")


def _worker(quantization: str, model: str) -> dict:
    from pagedllm import LLM, SamplingParams

    kwargs = dict(kv_cache_memory="1GiB", max_model_len=1024)
    if quantization == "none":
        kwargs["quantization"] = "none"
    llm = LLM(model, **kwargs)
    rng = random.Random(0)

    def prompts(n: int, lo: int, hi: int) -> list[list[int]]:
        return [[rng.randrange(100, 40000) for _ in range(rng.randint(lo, hi))] for _ in range(n)]

    def seconds(batch: list[list[int]], max_tokens: int) -> float:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(batch, params, use_tqdm=False)
        return time.perf_counter() - start

    seconds(prompts(2, 32, 32), 16)  # warm-up
    decode, prefill = [], []
    for _ in range(3):
        full, first = seconds(prompts(1, 32, 32), 128), seconds(prompts(1, 32, 32), 1)
        decode.append(127 / (full - first))
        prefill.append(512 / seconds(prompts(1, 512, 512), 1))
    many = 64 * 128 / seconds(prompts(64, 32, 256), 128)
    return {"decode_b1": max(decode), "prefill_512": max(prefill), "64req_out_tok_s": many}


def _run(tree: str, quantization: str, model: str, env: dict[str, str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", quantization, "--model", model]
    proc = subprocess.run(cmd, cwd="/", env={**os.environ, **env, "PYTHONPATH": tree},
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the base tree (e.g. a git worktree of the base commit)")
    parser.add_argument("--tree", default=os.path.dirname(os.path.dirname(__file__)) or ".")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["gguf", "none"],
        help="quantization per config: gguf (native) or none (float32)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for both trees")
    parser.add_argument("--output-json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.model)))
        return
    env = dict(item.split("=", 1) for item in args.env)
    trees = {"base": os.path.abspath(args.base), "change": os.path.abspath(args.tree)}
    runs = []
    for round_index in range(args.rounds):
        for config in args.configs:
            order = ["base", "change"] if round_index % 2 == 0 else ["change", "base"]
            for which in order:
                result = _run(trees[which], config, args.model, env)
                runs.append({"round": round_index, "config": config, "tree": which, **result})
                print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for config in args.configs:
        for workload in WORKLOADS:
            mean = {
                which: sum(r[workload] for r in runs if (r["config"], r["tree"]) == (config, which))
                / args.rounds
                for which in trees
            }
            summary[f"{config}/{workload}"] = {**mean, "ratio": mean["change"] / mean["base"]}
            print(
                f"{config:5s} {workload:16s} base {mean['base']:8.1f}  change "
                f"{mean['change']:8.1f}  {mean['change'] / mean['base']:.2f}x"
            )
    if args.output_json:
        import torch

        with open(args.output_json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "cpu": _cpu_model(), "cores": os.cpu_count(),
                       "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                       "env": env, "trees": trees, "runs": runs, "summary": summary}, f,
                      indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
