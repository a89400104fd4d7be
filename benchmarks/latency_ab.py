"""`pagedllm bench latency` of a change against its base, alternating fresh processes, plus a
check that both trees produce the same greedy tokens (--allow-token-change: only recorded, for a
change that alters the arithmetic on purpose).

For each config (Q4_1 GGUF as shipped, and fp32 via --quantization none) and each round, one
`bench latency --batch-sizes ...` process per tree, the trees' order flipping round by round (this
VM's speed drifts by up to ~10 % over minutes). Reported per config and batch size: the best
decode and prefill tok/s of each tree over the rounds and their ratio (change / base). Then each
tree generates greedy tokens for the same prompts alone and as one batch; the script fails if the
trees (unless --allow-token-change) or the batch shapes disagree.

    git worktree add /tmp/base <base-commit>
    python benchmarks/latency_ab.py --base /tmp/base --rounds 2 \
        --output-json benchmarks/results/latency_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

CONFIGS = {
    "q4_1": [],
    "gguf": [],  # (--model's file as it is: the same as q4_1, named for another model)
    "fp32": ["--quantization", "none"],
    "bf16": ["--quantization", "none", "--dtype", "bfloat16"],  # (bf16 weights, fp32 math)
}


def _bench(tree: str, flags: list[str], args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "bench", "latency",
               "--batch-sizes", *map(str, args.batch_sizes), "--input-len", str(args.input_len),
               "--output-len", str(args.output_len), "--num-iters", str(args.num_iters),
               "--peers", "none", "--kv-cache-memory", "1GiB",
               "--max-model-len", str(max(1024, args.input_len + args.output_len)),
               "--output-json", out.name, *flags]  # fmt: skip
        if args.model:
            cmd += ["--model", args.model]
        subprocess.run(cmd, cwd="/", env={**os.environ, "PYTHONPATH": tree}, check=True,
                       capture_output=True, text=True)  # fmt: skip
        results = json.load(open(out.name))["results"]
    return {
        str(r["batch_size"]): {k: r["engines"]["pagedllm"][k] for k in ("decode_tok_s",
                                                                          "prefill_tok_s")}
        for r in results
    }  # fmt: skip


_GREEDY = r"""
import json, random, sys
from pagedllm import LLM, SamplingParams
llm = LLM(sys.argv[3] or None, kv_cache_memory="1GiB", max_model_len=1024,
          quantization=sys.argv[1] or None, dtype=sys.argv[2])
rng = random.Random(0)
prompts = [[rng.randrange(100, 40000) for _ in range(rng.randint(8, 96))] for _ in range(32)]
params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
batched = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
alone = [llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts[:4]]
print(json.dumps({"batched": batched, "alone": alone}))
"""


def _greedy(tree: str, quantization: str, dtype: str, model: str | None) -> dict:
    proc = subprocess.run([sys.executable, "-c", _GREEDY, quantization, dtype, model or ""],
                          cwd="/", env={**os.environ, "PYTHONPATH": tree}, check=True,
                          capture_output=True, text=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the base commit's worktree")
    parser.add_argument("--change", default=os.path.dirname(os.path.dirname(__file__)) or ".")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--num-iters", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["q4_1", "fp32", "bf16"],
                        choices=list(CONFIGS))
    parser.add_argument("--model", help="another model than bench latency's default (a GGUF "
                        "file: --configs gguf)")
    parser.add_argument("--output-json")
    parser.add_argument("--allow-token-change", action="store_true",
                        help="a change that alters the arithmetic on purpose (another summation "
                             "order): record whether the trees' tokens agree instead of failing; "
                             "batch invariance is still required")  # fmt: skip
    args = parser.parse_args()
    trees = {"base": os.path.abspath(args.base), "change": os.path.abspath(args.change)}
    report: dict = {"machine": platform.processor() or platform.machine(), "args": vars(args),
                    "load_at_start": os.getloadavg()}
    for config in args.configs:
        runs: dict[str, list[dict]] = {"base": [], "change": []}
        for round_index in range(args.rounds):
            order = ["base", "change"] if round_index % 2 == 0 else ["change", "base"]
            for name in order:
                runs[name].append(_bench(trees[name], CONFIGS[config], args))
                print(f"{config} round {round_index} {name}: {runs[name][-1]}", flush=True)
        report[config] = _summarize(runs, args.batch_sizes)
        quantization = "" if config in ("q4_1", "gguf") else "none"
        dtype = "bfloat16" if config == "bf16" else "auto"
        tokens = {name: _greedy(tree, quantization, dtype, args.model)
                  for name, tree in trees.items()}  # fmt: skip
        same_trees = tokens["base"] == tokens["change"]
        alone_matches = tokens["change"]["alone"] == tokens["change"]["batched"][:4]
        report[config]["greedy_tokens_identical"] = same_trees
        report[config]["batch_invariant"] = alone_matches
        print(f"{config}: {json.dumps(report[config])}", flush=True)
        if not alone_matches or not (same_trees or args.allow_token_change):
            raise SystemExit(f"{config}: greedy tokens differ (trees {same_trees}, "
                             f"batch vs alone {alone_matches})")  # fmt: skip
    report["load_at_end"] = os.getloadavg()
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=1)


def _summarize(runs: dict[str, list[dict]], batch_sizes: list[int]) -> dict:
    summary = {}
    for batch in map(str, batch_sizes):
        row = {}
        for metric in ("decode_tok_s", "prefill_tok_s"):
            best = {name: max(r[batch][metric] for r in rs) for name, rs in runs.items()}
            row[metric] = {**best, "ratio": best["change"] / best["base"]}
        summary[f"batch_{batch}"] = row
    return summary


if __name__ == "__main__":
    main()
