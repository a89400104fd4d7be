"""Resident memory and speed of long prefills, a change against its base tree, alternating fresh
processes (one engine per process, the trees' order flipping round by round).

Each process: an offline LLM (the resident set once it is ready), then --steps times
--num-prompts prompts of --input-len random token ids with max_tokens 1 (so each is one prefill
chunk of num_prompts x input_len tokens, under --max-num-batched-tokens), timed; the high-water
mark of the prefills (VmHWM, reset first through /proc/self/clear_refs) and the resident set
after them. Reported per tree: the best prefill tok/s over the rounds and the memory figures.

    git archive <base> pagedllm | tar -x -C /tmp/base
    python benchmarks/prefill_memory_ab.py --base /tmp/base --model m.gguf --rounds 2 \
        --output-json benchmarks/results/prefill_memory_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

from pagedllm.benchmarks.results import build_record, write_record

MIB = 2**20


def _status_mib(key: str) -> float:
    # NOTE: a copy of tests/worker/test_step_memory.py's reader on purpose: the child runs this
    # file against the base tree's pagedllm (PYTHONPATH), which may predate any shared helper.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _child(args: argparse.Namespace) -> None:
    from pagedllm import LLM, SamplingParams

    llm = LLM(args.model, kv_cache_memory=args.kv_cache_memory, max_model_len=args.max_model_len,
              max_num_batched_tokens=args.max_num_batched_tokens)  # fmt: skip
    ready = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    rng = random.Random(0)
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    seconds = []
    for _ in range(args.steps):  # fresh prompts each time: no prefix-cache hits
        prompts = [{"prompt_token_ids": [rng.randrange(100, 30000) for _ in range(args.input_len)]}
                   for _ in range(args.num_prompts)]  # fmt: skip
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"ready_mib": ready, "peak_mib": _status_mib("VmHWM"),
                      "after_mib": _status_mib("VmRSS"), "seconds": seconds,
                      "tokens": args.num_prompts * args.input_len}))  # fmt: skip


def _run(tree: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model,
           "--kv-cache-memory", args.kv_cache_memory, "--max-model-len", str(args.max_model_len),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens),
           "--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len),
           "--steps", str(args.steps)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the base tree (a checkout or archive of it)")
    parser.add_argument("--change", default=os.path.dirname(os.path.dirname(__file__)) or ".")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="prefills per process")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-memory", default="1GiB")
    parser.add_argument("--output-json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    trees = {"base": args.base, "change": args.change}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in (("base", "change") if r % 2 == 0 else ("change", "base")):
            run = _run(trees[name], args)
            runs[name].append(run)
            print(f"round {r} {name:6s}: ready {run['ready_mib']:.0f} MiB, prefill peak "
                  f"{run['peak_mib']:.0f}, after {run['after_mib']:.0f}; prefill "
                  f"{run['tokens'] / min(run['seconds']):.0f} tok/s (best of {args.steps})",
                  flush=True)  # fmt: skip
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "prefill_tok_s": max(r["tokens"] / min(r["seconds"]) for r in rs),
            "ready_mib": min(r["ready_mib"] for r in rs),
            "peak_mib": max(r["peak_mib"] for r in rs),
            "after_mib": max(r["after_mib"] for r in rs),
        }  # fmt: skip
    ratio = summary["change"]["prefill_tok_s"] / summary["base"]["prefill_tok_s"]
    print(f"prefill change / base: {ratio:.3f}; " + "; ".join(
        f"{n}: ready {s['ready_mib']:.0f} MiB, peak {s['peak_mib']:.0f}, after {s['after_mib']:.0f}"
        for n, s in summary.items()), flush=True)  # fmt: skip
    if args.output_json:
        record = build_record("prefill_memory_ab", args, args.model,
                              [{"summary": summary, "runs": runs, "prefill_ratio": ratio}])
        write_record(record, args.output_json)


if __name__ == "__main__":
    main()
