"""`pagedllm bench speculative`: single-stream decode with and without speculative decoding.

Workloads (spec_workloads.py, chat-templated): "edit" and "code" answer by copying much of the
prompt (where n-gram drafts are accepted), "chat" does not. For each prompt the engines take
turns round by round: pagedllm with --speculative-config, the same engine with drafting paused
(`LLM.collective_rpc("set_drafting", (False,))`), and llama.cpp with and without its
prompt-lookup drafts when llama-cpp-python is installed. Reported per workload:
decode tok/s (tokens after the first over the time after the first), the draft acceptance rate
and the ratios. Then the batch sweep: the same repetitive prompt at batch 1, 2, 4, ... with and
without drafts (drafting on at every size), showing where speculation stops paying — the
default `disable_by_batch_size` comes from it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from typing import Any

from pagedllm.benchmarks.results import (
    add_output_args,
    build_record,
    default_output_path,
    write_record,
)
from pagedllm.benchmarks.spec_workloads import REPETITIVE, WORKLOADS

DEFAULT_SPEC = '{"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_min": 2}'


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    from pagedllm.entrypoints.cli.engine_flags import add_engine_args

    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--output-len", type=int, default=256, help="most tokens per answer")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--sweep-batch-sizes", type=int, nargs="*", default=[1, 2, 4, 8, 16],
                        help="batch sizes of the drafts-on/off sweep (none: skip it)")
    parser.add_argument("--llamacpp", action=argparse.BooleanOptionalAction, default=True,
                        help="also run llama.cpp with and without prompt lookup, if installed")
    add_output_args(parser)
    add_engine_args(parser)
    parser.set_defaults(speculative_config=DEFAULT_SPEC)


def main(args: argparse.Namespace) -> dict:
    from pagedllm.entrypoints.cli.engine_flags import engine_args_from

    engine_args = engine_args_from(args)
    # NOTE: "without drafts" is the same engine with drafting paused, not a second engine: two
    # engines in one process differ by a few percent (the later-built one was faster in A/A runs)
    spec = _llm(engine_args)
    tokenizer = spec.get_tokenizer()
    prompts = {name: [_chat(tokenizer, text) for text in texts]
               for name, texts in WORKLOADS.items()}
    runners: dict[str, Any] = {"pagedllm+spec": _Ours(spec, args.output_len, drafting=True),
                               "pagedllm": _Ours(spec, args.output_len, drafting=False)}
    runners.update(_llamacpp_runners(spec, args))
    results: dict[str, Any] = {}
    for name, texts in prompts.items():
        results[name] = _alternate(runners, texts, args.rounds)
        _print(name, results[name])
    repetitive = [results[n] for n in REPETITIVE]
    summary = _summary(results, repetitive)
    sweep = _sweep(engine_args, prompts["code"][0], args) if args.sweep_batch_sizes else []
    model = spec.llm_engine.config.model
    record = build_record("speculative", args, model.model or model.path, [results],
                          summary=summary, batch_sweep=sweep,
                          speculative_config=str(args.speculative_config))
    path = args.output_json or default_output_path("speculative", model.model or model.path,
                                                   f"out{args.output_len}")
    write_record(record, path)
    return record


def _llm(engine_args: Any) -> Any:
    """An LLM from EngineArgs (a shallow copy of its fields: asdict would turn a
    SpeculativeConfig into a dict)."""
    from pagedllm import LLM

    return LLM(**{f.name: getattr(engine_args, f.name) for f in fields(engine_args)})


def _chat(tokenizer: Any, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(rendered, add_special_tokens=False))


class _Ours:
    """pagedllm, one prompt at a time, greedy, drafting on or paused: (decode tok/s, tokens,
    drafted, accepted)."""

    def __init__(self, llm: Any, output_len: int, drafting: bool) -> None:
        from pagedllm import SamplingParams

        self.llm = llm
        self.drafting = drafting
        self.params = SamplingParams(temperature=0.0, max_tokens=output_len)

    def __call__(self, prompt: list[int]) -> dict[str, float]:
        self.llm.collective_rpc("set_drafting", (self.drafting,))
        engine = self.llm.llm_engine
        engine.add_request(f"bench-{time.perf_counter_ns()}", {"prompt_token_ids": prompt},
                           self.params)
        start, first, tokens, drafted, accepted = time.perf_counter(), None, 0, 0, 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                tokens = len(out.outputs[0].token_ids)
                if first is None and tokens:
                    first = time.perf_counter()
            stats = engine.last_stats.spec_decoding_stats if engine.last_stats else None
            if stats is not None:
                drafted += stats.num_draft_tokens
                accepted += stats.num_accepted_tokens
        end = time.perf_counter()
        assert first is not None
        return {"decode_tok_s": (tokens - 1) / max(end - first, 1e-9), "tokens": tokens,
                "seconds": end - start, "draft_tokens": drafted, "accepted_tokens": accepted}


class _LlamaCpp:
    """llama-cpp-python, greedy, optionally with its prompt-lookup draft model."""

    def __init__(self, path: str, lookup_tokens: int | None, n_ctx: int, output_len: int) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        from pagedllm.benchmarks.peers import _threads

        draft = (LlamaPromptLookupDecoding(num_pred_tokens=lookup_tokens)
                 if lookup_tokens else None)
        # NOTE: with a draft model llama-cpp-python keeps every position's logits (its
        # verification reads them); without logits_all it overruns its n_batch rows.
        self.llm = Llama(model_path=path, n_threads=_threads(), n_threads_batch=_threads(),
                         n_ctx=n_ctx, n_batch=512, draft_model=draft,
                         logits_all=draft is not None, verbose=False)
        self.output_len = output_len

    def __call__(self, prompt: list[int]) -> dict[str, float]:
        self.llm.reset()
        start, first, tokens = time.perf_counter(), None, 0
        for token in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                       repeat_penalty=1.0, reset=True):
            tokens += 1
            if first is None:
                first = time.perf_counter()
            if token == self.llm.token_eos() or tokens >= self.output_len:
                break
        end = time.perf_counter()
        assert first is not None
        return {"decode_tok_s": (tokens - 1) / max(end - first, 1e-9), "tokens": tokens,
                "seconds": end - start}


def _llamacpp_runners(spec: Any, args: argparse.Namespace) -> dict[str, Any]:
    from pagedllm.benchmarks.peers import LLAMACPP_MISSING, llamacpp_available

    if not args.llamacpp:
        return {}
    if not llamacpp_available():
        print(LLAMACPP_MISSING, flush=True)
        return {}
    model = spec.llm_engine.config.model
    if model.format != "gguf":
        print("llama.cpp needs a GGUF model: skipped", flush=True)
        return {}
    if model.quantization is None:
        # float weights here: llama.cpp on the quantized file would not be the same model
        print("pagedllm runs float weights: llama.cpp compared on quantized runs only",
              flush=True)
        return {}
    config = spec.llm_engine.config.speculative
    n_ctx = min(model.max_model_len, 4096)
    lookup = config.num_speculative_tokens if config is not None else 8
    return {"llama_cpp+lookup": _LlamaCpp(model.path, lookup, n_ctx, args.output_len),
            "llama_cpp": _LlamaCpp(model.path, None, n_ctx, args.output_len)}


def _alternate(runners: dict[str, Any], prompts: list[list[int]], rounds: int) -> dict:
    """Per runner: the best decode tok/s per prompt over the rounds (order flipped each round),
    summed tokens and the acceptance rate of its drafts."""
    best: dict[str, list[dict]] = {name: [] for name in runners}
    for prompt in prompts:
        for runner in runners.values():
            runner(prompt)  # warm-up
        runs: dict[str, list[dict]] = {name: [] for name in runners}
        names = list(runners)
        for round_ in range(rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                runs[name].append(runners[name](prompt))
        for name, measured in runs.items():
            best[name].append(max(measured, key=lambda r: r["decode_tok_s"]))
    out = {}
    for name, per_prompt in best.items():
        drafted = sum(r.get("draft_tokens", 0) for r in per_prompt)
        accepted = sum(r.get("accepted_tokens", 0) for r in per_prompt)
        out[name] = {
            "decode_tok_s": sum(r["decode_tok_s"] for r in per_prompt) / len(per_prompt),
            "tokens": [r["tokens"] for r in per_prompt],
            "acceptance_rate": accepted / drafted if drafted else None,
            "per_prompt": per_prompt,
        }
    return out


def _print(name: str, result: dict) -> None:
    base = result["pagedllm"]["decode_tok_s"]
    for runner, r in result.items():
        acceptance = (f", acceptance {r['acceptance_rate']:.2f}"
                      if r["acceptance_rate"] is not None else "")
        print(f"{name:5s} {runner:17s} {r['decode_tok_s']:7.1f} decode tok/s "
              f"({r['decode_tok_s'] / base:.2f}x pagedllm without drafts{acceptance}), "
              f"tokens {r['tokens']}", flush=True)


def _summary(results: dict, repetitive: list[dict]) -> dict:
    def ratio(a: str, b: str, rows: list[dict]) -> float | None:
        if not all(a in r and b in r for r in rows):
            return None
        return sum(r[a]["decode_tok_s"] for r in rows) / sum(r[b]["decode_tok_s"] for r in rows)

    summary = {
        "repetitive_speedup": ratio("pagedllm+spec", "pagedllm", repetitive),
        "chat_speedup": ratio("pagedllm+spec", "pagedllm", [results["chat"]]),
    }
    for peer in ("llama_cpp", "llama_cpp+lookup"):
        if peer in results["chat"]:
            summary[f"repetitive_vs_{peer}"] = ratio("pagedllm+spec", peer, repetitive)
    print("summary:", json.dumps({k: None if v is None else round(v, 3)
                                  for k, v in summary.items()}), flush=True)
    return summary


def _sweep(engine_args: Any, prompt: list[int], args: argparse.Namespace) -> list[dict]:
    """Output tok/s of batch B of the repetitive prompt, drafts on (at every size) and off."""
    from pagedllm import SamplingParams
    from pagedllm.config import SpeculativeConfig

    config = SpeculativeConfig.parse(args.speculative_config)
    assert config is not None
    llm = _llm(replace(engine_args, speculative_config=replace(
        config, disable_by_batch_size=None)))
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len)
    rows = []
    for batch in args.sweep_batch_sizes:
        # distinct prompts (a different first token) so no request rides on another's cache
        prompts = [{"prompt_token_ids": [prompt[0] + i % 7, *prompt[1:]]} for i in range(batch)]
        rates: dict[str, float] = {}
        for round_ in range(max(2, args.rounds - 1)):
            order = [("on", True), ("off", False)]
            for label, drafting in order if round_ % 2 == 0 else order[::-1]:
                llm.collective_rpc("set_drafting", (drafting,))
                start = time.perf_counter()
                outs = llm.generate(prompts, params, use_tqdm=False)
                rate = sum(len(o.outputs[0].token_ids) for o in outs) / (
                    time.perf_counter() - start)
                rates[label] = max(rates.get(label, 0.0), rate)
        rows.append({"batch_size": batch, "drafts_on_tok_s": rates["on"],
                     "drafts_off_tok_s": rates["off"], "ratio": rates["on"] / rates["off"]})
        print(f"sweep batch {batch:3d}: drafts on {rates['on']:7.1f} out tok/s, off "
              f"{rates['off']:7.1f}, ratio {rates['on'] / rates['off']:.2f}", flush=True)
    return rows
