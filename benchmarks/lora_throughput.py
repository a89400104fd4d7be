"""Multi-LoRA throughput: the 64-request offline workload (random prompts of 32-256 tokens, 128
output tokens each, greedy, ignore_eos) on SmolLM2-135M-Instruct with rank-8 adapters on all seven
projections, requests spread round-robin over 4 adapters, against the same requests on the base
model. Three configurations, taking turns for --rounds rounds (the best round of each kept):

    base          LLM(model)                       the engine as users run it (fused stack)
    lora_base     LLM(model, enable_lora=True)     every request on the base (no adapter token)
    lora_spread   LLM(model, enable_lora=True)     requests over 4 adapters in every batch

and prints output tok/s and the ratios (goal: lora_spread / base >= 0.8). The adapters are made
with peft for the model's config (random weights; the throughput does not depend on them).

    PYTHONPATH=. python benchmarks/lora_throughput.py --num-threads 2 \
        --output benchmarks/results/lora_throughput_smollm2.json

The machine this ran on is shared with other sessions: the figures are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from pagedllm import LLM, LoRARequest, SamplingParams
from pagedllm.benchmarks.datasets import random_requests

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapters(hf_config, directory: str, count: int, rank: int) -> list[LoRARequest]:
    """`count` random PEFT adapters for a model of `hf_config` (built from the config alone)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_config(hf_config)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank,
                                            target_modules=PROJECTIONS))
    loras = []
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        path = os.path.join(directory, f"adapter{i}")
        model.save_pretrained(path)
        loras.append(LoRARequest(f"adapter{i}", i + 1, path))
    return loras


def timed_run(llm: LLM, prompts, params, loras) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=loras)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    # NOTE: CPU seconds (all of this process's threads) move far less than wall seconds when
    # other processes share the cores; both are kept
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "output_tokens": generated, "output_tok_s": round(generated / seconds, 2),
            "output_tok_per_cpu_s": round(generated / cpu_seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--num-adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2,
                        help="each configuration runs this many times, in turns; best kept")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    # NOTE: no prefix caching: the rounds repeat the same prompts, and a cache hit skips the
    # prefill. The base engine's cache serves only its own runs (all hits from round 2 on), while
    # the LoRA engine's is shared by two configurations whose blocks hash apart (the adapter is in
    # the hash) and evict each other: with caching on, "base" measured 1.5x "lora_base".
    engine_kwargs = dict(num_threads=args.num_threads, kv_cache_memory="1GiB",
                         enable_prefix_caching=False)
    base_llm = LLM(args.model, **engine_kwargs)
    config = base_llm.llm_engine.config.model
    requests = random_requests(args.num_prompts, (32, 256), (args.output_len, args.output_len),
                               config.vocab_size, seed=0)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True)
              for r in requests]
    with tempfile.TemporaryDirectory() as directory:
        adapters = make_adapters(config.hf_config, directory, args.num_adapters, args.rank)
        lora_llm = LLM(args.model, enable_lora=True, max_loras=args.num_adapters,
                       max_lora_rank=args.rank, **engine_kwargs)
        spread = [adapters[i % len(adapters)] for i in range(len(prompts))]
        configs = {"base": (base_llm, None), "lora_base": (lora_llm, None),
                   "lora_spread": (lora_llm, spread)}
        for llm, loras in configs.values():  # warm-up (adapters loaded into their slots)
            llm.generate(prompts[:4], params[:4], use_tqdm=False,
                         lora_request=loras[:4] if loras else None)
        # NOTE: the configurations take turns, each round, and each keeps its best round: on a
        # shared machine a neighbour's load would otherwise land on one configuration only
        rounds: dict[str, list[dict]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, (llm, loras) in configs.items():
                rounds[name].append(timed_run(llm, prompts, params, loras))
                print(name, rounds[name][-1], flush=True)
            record = _record(args, config.quantization, rounds)
            if args.output:  # (after every round: a run cut short still leaves its rounds)
                with open(args.output, "w") as f:
                    json.dump(record, f, indent=2)
    for name, run in record["runs"].items():
        print(f"{name:12s} {run['output_tok_s']:8.1f} output tok/s ({run['seconds']} s, "
              f"{run['output_tok_per_cpu_s']:.1f} per CPU second)")
    for metric, values in record["ratios"].items():
        for name, value in values.items():
            print(f"{metric:22s} {name:26s} {value:.3f}")


def _record(args: argparse.Namespace, quantization: str | None,
            rounds: dict[str, list[dict]]) -> dict:
    """The results so far: each configuration's best round (by wall-clock tok/s) and the
    ratios of the best of each metric."""
    runs = {name: max(results, key=lambda r: r["output_tok_s"])
            for name, results in rounds.items()}
    ratios = {}
    for metric in ("output_tok_s", "output_tok_per_cpu_s"):
        best = {name: max(r[metric] for r in results) for name, results in rounds.items()}
        ratios[metric] = {
            "lora_spread_vs_base": round(best["lora_spread"] / best["base"], 3),
            "lora_base_vs_base": round(best["lora_base"] / best["base"], 3),
            "lora_spread_vs_lora_base": round(best["lora_spread"] / best["lora_base"], 3),
        }
    return {
        "benchmark": "lora_throughput", "model": args.model, "quantization": quantization,
        "workload": {"num_prompts": args.num_prompts, "input_len": [32, 256],
                     "output_len": args.output_len, "num_adapters": args.num_adapters,
                     "rank": args.rank, "targets": PROJECTIONS},
        "runs": runs, "ratios": ratios, "all_rounds": rounds,
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "note": "shared machine (2 cores, other sessions running; load average 2-6 during the "
                "run): wall-clock figures swing 5x between rounds, indicative only",
    }


if __name__ == "__main__":
    main()
