"""Where the 64-request offline workload's time goes (bench throughput's requests, greedy,
exactly --output-len tokens each): the run split into prefill steps (a request with more than one
scheduled token) and decode steps, and each step into its parts: the fused stack's sections
(linears by kind, paged attention, norms, rotary + KV write, activation; the kernels' own timer,
decoder_layer.cpp), the rest of the forward (embedding, final norm), the LM head, the sampler,
the engine's Python (schedule, input preparation, scheduler update, output processing) and the
rest of the step. Under contention (a shared machine) use --clock cpu at one thread: every part
is then the calling thread's CPU time (the kernels' timer and the step profiler both), which
other processes do not inflate as they inflate wall time. The generated token ids go into the
JSON too (their sha256; all of them with --save-tokens) so two builds' greedy outputs can be
compared token for token.

    PAGEDLLM_NUM_THREADS=1 python benchmarks/profile_offline_steps.py --num-threads 1 \
        --clock cpu --quantized-activation-dtype int8 --output-json /tmp/profile_int8.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections import defaultdict

import torch

from pagedllm.benchmarks.datasets import add_dataset_args, requests_from_args
from pagedllm.benchmarks.engine import EngineRunner
from pagedllm.benchmarks.peers import warm_up
from pagedllm.entrypoints.cli.engine_flags import add_engine_args
from pagedllm.metrics import step_profile
from pagedllm.metrics.step_profile import step_phase

SECTIONS = ("norm", "qkv", "rotary_kv", "attention", "o", "gate_up", "act", "down")
"""decoder_layer.cpp's StackSection order."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--output-json", required=True)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the thread's CPU time (use at 1 thread on a busy machine)")
    parser.add_argument("--save-tokens", action="store_true",
                        help="every request's generated ids in the JSON")  # fmt: skip
    add_dataset_args(parser, default_num_prompts=64)
    add_engine_args(parser)
    args = parser.parse_args()
    engine = EngineRunner(args)
    requests = requests_from_args(args, engine.tokenizer, max_model_len=engine.max_model_len)
    warm_up(engine, requests[0].prompt_len)
    record = profile(engine, requests, args.clock)
    record["args"] = {k: v for k, v in vars(args).items() if _plain(v)}
    record["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    if not args.save_tokens:
        record.pop("token_ids")
    with open(args.output_json, "w") as f:
        json.dump(record, f, indent=1)
    print(format_record(record), flush=True)


def profile(engine: EngineRunner, requests: list, clock: str = "wall") -> dict:
    """One timed generate of `requests`, every step classified and split."""
    now = time.thread_time if clock == "cpu" else time.perf_counter
    step_profile.time = _Clock(now)  # (the module's only use of time is perf_counter)
    llm_engine = engine.llm.llm_engine
    core = llm_engine.engine_core.engine_core
    runner = core.executor.driver_worker.model_runner
    profiler = llm_engine.step_profiler
    restore = _instrument(core.scheduler, runner)
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    last_kind: list[str] = []
    step = llm_engine.step

    def timed_step():  # (LLM.generate calls llm_engine.step in a loop)
        phases_before = dict(profiler.seconds)
        sections_before = torch.ops.pagedllm.stack_section_seconds()
        start = now()
        result = step()
        elapsed = now() - start
        kind = core.scheduler.last_step_kind
        last_kind.append(kind)
        for name, seconds in profiler.seconds.items():
            sums[kind][name] += seconds - phases_before.get(name, 0.0)
        for name, after, before in zip(SECTIONS, torch.ops.pagedllm.stack_section_seconds(),
                                       sections_before):
            sums[kind]["stack." + name] += after - before
        sums[kind]["step"] += elapsed
        counts[kind]["steps"] += 1
        counts[kind]["rows"] += core.scheduler.last_step_rows
        counts[kind]["tokens"] += core.scheduler.last_step_tokens
        return result

    llm_engine.step = timed_step
    profiler.reset()
    profiler.enabled = True
    torch.ops.pagedllm.set_stack_section_timing(2 if clock == "cpu" else 1)
    prompts = [r.prompt_token_ids for r in requests]
    params = _greedy(requests)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        outputs = engine.llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                      use_tqdm=False)  # fmt: skip
    finally:
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        torch.ops.pagedllm.set_stack_section_timing(0)
        step_profile.time = time
        profiler.enabled = False
        del llm_engine.step
        restore()
    token_ids = [list(o.outputs[0].token_ids) for o in outputs]
    made = sum(len(t) for t in token_ids)
    digest = hashlib.sha256(json.dumps(token_ids).encode()).hexdigest()
    return {
        "benchmark": "profile_offline_steps",
        "engine": engine.describe(),
        "num_requests": len(requests),
        "output_tokens": made,
        "wall_s": wall,
        "output_tok_s": made / wall,
        "cpu_s": cpu,
        "output_tok_per_cpu_s": made / cpu,
        "clock": clock,
        "steps_s": sum(s["step"] for s in sums.values()),
        "by_kind": {kind: _breakdown(sums[kind], counts[kind], cpu if clock == "cpu" else wall)
                    for kind in sums},  # fmt: skip
        "tokens_sha256": digest,
        "token_ids": token_ids,
    }


class _Clock:
    """Stands in for the time module in metrics/step_profile.py: its perf_counter is `now`."""

    def __init__(self, now) -> None:
        self.perf_counter = now


def _breakdown(sums: dict[str, float], counts: dict[str, int], total: float) -> dict:
    """Seconds per component of one step kind; `forward.rest` and `step.other` are what the
    named parts leave of the forward and the step."""
    stack = sum(sums.get("stack." + n, 0.0) for n in SECTIONS)
    parts = {"stack." + n: sums.get("stack." + n, 0.0) for n in SECTIONS}
    forward = sums.get("forward", 0.0)
    parts["lm_head"] = sums.get("lm_head", 0.0)
    parts["forward.rest"] = forward - stack - parts["lm_head"]
    parts["sampler"] = sums.get("sampler", 0.0)
    parts["sample.rest"] = sums.get("sample", 0.0) - parts["sampler"]
    for name in ("schedule", "prepare_inputs", "update", "output"):
        parts[name] = sums.get(name, 0.0)
    parts["step.other"] = sums["step"] - sum(
        sums.get(n, 0.0) for n in ("schedule", "prepare_inputs", "forward", "sample", "update",
                                   "output"))  # fmt: skip
    return {
        **counts,
        "seconds": sums["step"],
        "percent_of_total": 100 * sums["step"] / total,
        "ms_per_step": 1000 * sums["step"] / max(counts["steps"], 1),
        "parts_s": parts,
        "parts_percent_of_kind": {n: 100 * s / sums["step"] for n, s in parts.items()},
    }


def _instrument(scheduler, runner) -> callable:
    """Wrap the scheduler (each step's kind and size), the LM head and the sampler (their own
    phases) with instance attributes over their class's methods; returns the undo."""
    schedule, compute_logits = scheduler.schedule, runner.model.compute_logits
    sample = runner.sampler.forward

    def classified_schedule():
        out = scheduler.schedule.__wrapped__()
        tokens = out.total_num_scheduled_tokens
        rows = len(out.num_scheduled_tokens)
        scheduler.last_step_kind = "decode" if tokens == rows else "prefill"
        scheduler.last_step_rows, scheduler.last_step_tokens = rows, tokens
        return out

    def timed_logits(*a, **k):
        with step_phase("lm_head"):
            return compute_logits(*a, **k)

    def timed_sample(*a, **k):
        with step_phase("sampler"):
            return sample(*a, **k)

    classified_schedule.__wrapped__ = schedule
    scheduler.schedule = classified_schedule
    runner.model.compute_logits = timed_logits
    runner.sampler.forward = timed_sample

    def restore() -> None:  # (the class's methods show through again)
        del scheduler.schedule, runner.model.compute_logits, runner.sampler.forward

    return restore


def _greedy(requests: list) -> list:
    from pagedllm import SamplingParams

    return [SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True)
            for r in requests]  # fmt: skip


def _plain(value: object) -> bool:
    return isinstance(value, (str, int, float, bool, type(None)))


def format_record(record: dict) -> str:
    lines = [f"{record['output_tok_s']:.1f} out tok/s over {record['wall_s']:.2f} s wall, "
             f"{record['output_tok_per_cpu_s']:.1f} per CPU s ({record['cpu_s']:.2f} s); "
             f"steps {record['steps_s']:.2f} s ({record['clock']}); load {record['load_avg']}; "
             f"tokens sha256 {record['tokens_sha256'][:16]}"]  # fmt: skip
    for kind, b in record["by_kind"].items():
        lines.append(f"{kind}: {b['steps']} steps, {b['seconds']:.2f} s "
                     f"({b['percent_of_total']:.1f}% of the run), {b['ms_per_step']:.2f} ms/step, "
                     f"{b['rows'] / max(b['steps'], 1):.1f} rows/step")  # fmt: skip
        for name, seconds in b["parts_s"].items():
            lines.append(f"  {name:<18}{seconds:8.3f} s {b['parts_percent_of_kind'][name]:6.1f}%")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
