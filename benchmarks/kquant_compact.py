"""GGUF K-quant weights with compact scales (KQuantWeight, PAGEDLLM_COMPACT_KQUANT=1, the default)
against the multiplied-out form (PackedGroupWeight, PAGEDLLM_COMPACT_KQUANT=0) and llama.cpp:

  memory  a fresh process per form: resident set after loading, the bytes of every quantized
          weight and bytes per weight of the K-quant layers; 16 greedy tokens of two prompts
          (the two forms must agree: the compact kernel computes the same bits)
  speed   one process holding both forms and llama.cpp (llama-cpp-python), batch 1, the engines
          alternating run by run with the order flipping (pagedllm.benchmarks.latency._measure):
          decode tok/s from per-token times and prefill tok/s of an --input-len prompt

    PAGEDLLM_NUM_THREADS=1 python benchmarks/kquant_compact.py --threads 1 --rounds 3 \
        --output-json benchmarks/results/kquant_compact_1thread.json

Models: the packaged Gemma 3 270M Q4_K_M and the random 1B-class Llama files of
benchmarks/make_big_gguf.py (Q4_K_M, Q8_0; skipped when absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

BENCH_MODELS = os.path.expanduser("~/.cache/pagedllm/bench-models")
FORMS = {"packed": "0", "compact": "1"}

_MEMORY = r"""
import json, os, sys, torch
from pagedllm import LLM, SamplingParams
from pagedllm.model_executor.quantization.kernels import PackedGroupWeight
from pagedllm.model_executor.quantization.kquant_weight import KQuantWeight
from pagedllm.model_executor.quantization.q5_weight import Q5Weight
llm = LLM(sys.argv[1], kv_cache_memory="64MiB", max_model_len=512, enable_prefix_caching=False)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
model = llm.llm_engine.engine_core.engine_core.executor.driver_worker.model
layers = {}
for name, m in model.named_modules():
    if isinstance(m, (PackedGroupWeight, KQuantWeight, Q5Weight)):
        nbytes = sum(t.numel() * t.element_size() for t in m.buffers() if t is not None)
        layers[name] = {"kind": type(m).__name__, "bytes": nbytes,
                        "weights": m.out_features * m.in_features}
params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
prompts = [[int(t) for t in range(100, 132)], [int(t) for t in range(900, 964, 2)]]
tokens = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
print(json.dumps({"rss_mib": rss(), "layers": layers, "tokens": [list(t) for t in tokens]}))
"""


def memory(model: str, switch: str = "PAGEDLLM_COMPACT_KQUANT") -> dict:
    out = {}
    for form, flag in FORMS.items():
        env = {**os.environ, switch: flag, "PAGEDLLM_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", _MEMORY, model], env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        out[form] = json.loads(done.stdout.strip().splitlines()[-1])
    compact_k = {n for n, v in out["compact"]["layers"].items()
                 if v["kind"] in ("KQuantWeight", "Q5Weight")}  # fmt: skip
    summary = {}
    for form, rec in out.items():
        k_layers = [rec["layers"][n] for n in compact_k]
        weights = sum(v["weights"] for v in k_layers)
        summary[form] = {
            "rss_mib": round(rec["rss_mib"], 1),
            "quantized_weight_mib": round(sum(v["bytes"] for v in rec["layers"].values()) / 2**20,
                                          1),
            "kquant_layers": len(k_layers),
            "kquant_bits_per_weight": round(8 * sum(v["bytes"] for v in k_layers) / weights, 3)
            if weights else None,
            "all_quantized_bits_per_weight": round(
                8 * sum(v["bytes"] for v in rec["layers"].values())
                / sum(v["weights"] for v in rec["layers"].values()), 3),
        }
    summary["greedy_tokens_equal"] = out["packed"]["tokens"] == out["compact"]["tokens"]
    return summary


_SPEED = r"""
import argparse, json, os, sys
from pagedllm.benchmarks import latency
from pagedllm.benchmarks.engine import EngineRunner
from pagedllm.benchmarks.peers import LlamaCppRunner
model = sys.argv[1]
threads, rounds, input_len, output_len = map(int, sys.argv[2:6])
parser = argparse.ArgumentParser()
latency.add_cli_args(parser)
args = parser.parse_args(["--model", model, "--input-len", str(input_len), "--output-len",
                          str(output_len), "--num-iters", str(rounds), "--num-iters-warmup", "1",
                          "--num-threads", str(threads), "--kv-cache-memory", "64MiB",
                          "--max-model-len", "1024", "--no-enable-prefix-caching",
                          "--peers", "none"])
runners = {}
for form, flag in (("packed", "0"), ("compact", "1")):
    os.environ["PAGEDLLM_COMPACT_KQUANT"] = flag  # read while the weights load
    runners[form] = latency._our_runner(EngineRunner(args))
vocab = 49152 if "random-llama" in model else 262144
runners["llama_cpp"] = LlamaCppRunner(model, threads, input_len + output_len + 8).generate_timed
prompts = latency._prompt_maker(1, input_len, vocab, 0)
stats = latency._measure(runners, prompts, args)
print(json.dumps({name: {k: s[k] for k in ("decode_tok_s", "prefill_tok_s")}
                  for name, s in stats.items()}))
"""


def speed(model: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PAGEDLLM_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-c", _SPEED, model, str(args.threads), str(args.rounds),
           str(args.input_len), str(args.output_len)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    engines = json.loads(done.stdout.strip().splitlines()[-1])
    c, p, peer = engines["compact"], engines["packed"], engines["llama_cpp"]
    ratios = {f"{k}_compact_over_packed": round(c[k] / p[k], 3) for k in c}
    ratios.update({f"{k}_compact_over_llama_cpp": round(c[k] / peer[k], 3) for k in c})
    return {"engines": engines, "ratios": ratios}


def _models(names: list[str]) -> dict[str, str]:
    from pagedllm.model_executor.model_loader.packaged import GEMMA3_270M, assembled_gguf

    every = {"gemma3-270m-q4_k_m": lambda: assembled_gguf(GEMMA3_270M)}
    for quant in ("Q4_K_M", "Q8_0"):
        path = os.path.join(BENCH_MODELS, f"random-llama-1b-{quant}.gguf")
        every[f"llama-1b-{quant.lower()}"] = lambda path=path: path
    chosen = {}
    for name in names:
        path = every[name]()
        if os.path.exists(path):
            chosen[name] = path
        else:
            print(f"{name}: {path} absent (benchmarks/make_big_gguf.py builds it)", flush=True)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gemma3-270m-q4_k_m", "llama-1b-q4_k_m",
                                                        "llama-1b-q8_0"])  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--switch", default="PAGEDLLM_COMPACT_KQUANT",
                        help="memory: the variable the two forms differ in (PAGEDLLM_COMPACT_Q5: "
                        "Q5_0/Q5_1 alone)")  # fmt: skip
    parser.add_argument("--output-json")
    args = parser.parse_args()
    record = {"cpu": platform.processor() or _cpu_model(), "threads": args.threads,
              "rounds": args.rounds, "input_len": args.input_len, "output_len": args.output_len,
              "load_before": os.getloadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                        time.gmtime()),
              "models": {}}  # fmt: skip
    for name, path in _models(args.models).items():
        rec = record["models"][name] = {"path": path}
        if not args.skip_memory:
            rec["memory"] = memory(path, args.switch)
            print(name, json.dumps(rec["memory"]), flush=True)
        if not args.skip_speed:
            rec["speed"] = speed(path, args)
            print(name, json.dumps(rec["speed"]), flush=True)
    record["load_after"] = os.getloadavg()
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(record, f, indent=2)


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
