"""First tokenizer load of a GGUF model in a fresh process (and optionally the whole offline
engine start), a change against its base tree, alternating fresh processes (the trees' order
flipping round by round).

Each process imports pagedllm's tokenizer loader and transformers (timed apart), then times
`load_tokenizer(<file>)` (the first load: the file parsed, the vocabulary built); with
--engine, a second process per tree and round times `LLM(<file>)` instead (config, weights,
tokenizer, KV cache). Reported per tree: every round's seconds and their median.

    git archive <base> pagedllm | tar -x -C /tmp/base
    PAGEDLLM_NUM_THREADS=1 python benchmarks/gguf_tokenizer_load.py --base /tmp/base \
        --model ~/.cache/pagedllm/gemma-3-270m-q4_k_m.gguf --rounds 3 --engine \
        --output-json benchmarks/results/gguf_tokenizer_load_gemma3_270m_session8.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from pagedllm.benchmarks.results import build_record, write_record


def _child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    import transformers  # noqa: F401

    from pagedllm.tokenizer.loader import load_tokenizer

    imported = time.perf_counter()
    if args.child == "engine":
        from pagedllm import LLM

        llm = LLM(args.model, kv_cache_memory="128MiB", max_model_len=512)
        tokenizer = llm.get_tokenizer()
    else:
        tokenizer = load_tokenizer(args.model)
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - start, "seconds": done - imported,
                      "vocab": len(tokenizer), "class": type(tokenizer).__name__,
                      "hello": tokenizer.encode("Hello world")}))  # fmt: skip


def _run(tree: str, what: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--model", args.model]
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the base tree (a checkout or archive; required)")
    parser.add_argument("--change", default=os.path.dirname(os.path.dirname(__file__)) or ".")
    parser.add_argument("--model", required=True, help="a .gguf file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", action="store_true", help="also time LLM(model)")
    parser.add_argument("--output-json")
    parser.add_argument("--child", choices=["tokenizer", "engine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if args.base is None:
        parser.error("--base is required")
    args.model = os.path.abspath(os.path.expanduser(args.model))
    trees = {"base": args.base, "change": args.change}
    kinds = ["tokenizer", *(["engine"] if args.engine else [])]
    runs: dict[str, dict[str, list[dict]]] = {k: {n: [] for n in trees} for k in kinds}
    for r in range(args.rounds):
        for what in kinds:
            for name in (("base", "change") if r % 2 == 0 else ("change", "base")):
                load = _loadavg()
                run = {**_run(trees[name], what, args), "loadavg_before": load}
                runs[what][name].append(run)
                print(f"round {r} {what:9s} {name:6s}: {run['seconds']:6.2f} s (imports "
                      f"{run['import_s']:.2f} s; {run['class']}, {run['vocab']} tokens; "
                      f"load {load})", flush=True)  # fmt: skip
    summary = {what: {name: statistics.median(r["seconds"] for r in rs)
                      for name, rs in by_tree.items()}
               for what, by_tree in runs.items()}  # fmt: skip
    for what, medians in summary.items():
        print(f"{what}: median base {medians['base']:.2f} s, change {medians['change']:.2f} s "
              f"({medians['base'] / medians['change']:.1f}x)", flush=True)
    same = {what: len({json.dumps(r["hello"]) for rs in by_tree.values() for r in rs}) == 1
            for what, by_tree in runs.items()}  # fmt: skip
    print(f"same encoding of 'Hello world' in every process: {same}", flush=True)
    if args.output_json:
        record = build_record("gguf_tokenizer_load", args, args.model,
                              [{"median_s": summary, "runs": runs, "same_encoding": same}])
        write_record(record, args.output_json)


if __name__ == "__main__":
    main()
