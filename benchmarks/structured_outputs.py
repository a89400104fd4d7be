"""Structured-output overhead: the same batch with every request JSON-schema-constrained vs
unconstrained, alternating in one process, plus time to first token with a cold schema.

Two workloads (SmolLM2 Q4_1 as shipped, greedy, chat prompts):
- "fixed": every request generates exactly --output-len tokens (unconstrained with ignore_eos;
  constrained with a schema whose array needs more tokens than that), so both sides decode the
  same number of steps at the same batch size: the ratio is the per-token cost of the grammar.
- "natural": a schema-shaped answer that ends when the JSON ends vs free text that ends at EOS
  or --output-len (reported for context: the lengths differ).
TTFT: one request with a schema never seen before (compile included) vs the same prompt
unconstrained vs the same schema again (cached).

    python benchmarks/structured_outputs.py --rounds 3 \
        --output-json benchmarks/results/structured_outputs_smollm2_q4_1.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from pagedllm import LLM, SamplingParams
from pagedllm.sampling_params import StructuredOutputsParams

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 60},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 30},
                   "maxItems": 5},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "skills", "employed"],
}
LONG_LIST = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
             "minItems": 400}
TOPICS = ["a chef", "a pilot", "a teacher", "a nurse", "an engineer", "a painter", "a farmer",
          "a lawyer"]


def chat_prompts(llm: LLM, n: int, task: str) -> list[str]:
    tokenizer = llm.get_tokenizer()
    return [tokenizer.apply_chat_template(
        [{"role": "user", "content": task.format(topic=TOPICS[i % len(TOPICS)], i=i)}],
        tokenize=False, add_generation_prompt=True) for i in range(n)]


def timed(llm: LLM, prompts: list[str], params: SamplingParams) -> dict:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"seconds": seconds, "output_tokens": tokens, "output_tok_s": tokens / seconds}


def ttft(llm: LLM, prompt: str, params: SamplingParams) -> float:
    engine = llm.llm_engine
    start = time.perf_counter()
    engine.add_request(f"ttft-{start}", prompt, params)
    while True:
        for out in engine.step():
            if out.outputs and out.outputs[0].token_ids:
                first = time.perf_counter() - start
                engine.abort_request(out.request_id)
                while engine.has_unfinished_requests():
                    engine.step()
                return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()
    llm = LLM(None, kv_cache_memory="1GiB", max_model_len=1024)
    n, length = args.batch_size, args.output_len
    fixed_prompts = chat_prompts(llm, n, "List {i} and then 400 more numbers as a JSON array.")
    person_prompts = chat_prompts(llm, n, "Describe {topic} as a JSON object.")
    workloads = {
        "fixed": (fixed_prompts,
                  SamplingParams(temperature=0, max_tokens=length,
                                 structured_outputs=StructuredOutputsParams(json=LONG_LIST)),
                  SamplingParams(temperature=0, max_tokens=length, ignore_eos=True)),
        "natural": (person_prompts,
                    SamplingParams(temperature=0, max_tokens=length,
                                   structured_outputs=StructuredOutputsParams(json=PERSON)),
                    SamplingParams(temperature=0, max_tokens=length)),
    }
    timed(llm, fixed_prompts[:4], workloads["fixed"][2])  # warm-up
    results: dict = {}
    for name, (prompts, constrained, free) in workloads.items():
        runs: dict[str, list[dict]] = {"constrained": [], "free": []}
        for round_ in range(args.rounds):
            order = [("constrained", constrained), ("free", free)]
            for label, params in order if round_ % 2 == 0 else order[::-1]:
                runs[label].append(timed(llm, prompts, params))
        best = {k: max(r["output_tok_s"] for r in v) for k, v in runs.items()}
        results[name] = {"runs": runs, "best_output_tok_s": best,
                         "ratio_constrained_over_free": best["constrained"] / best["free"]}
        print(f"{name:8s} batch {n}: constrained {best['constrained']:.1f} out tok/s, free "
              f"{best['free']:.1f}, ratio {best['constrained'] / best['free']:.3f}")
    prompt = person_prompts[0]
    one = dict(temperature=0, max_tokens=4)
    cold_schema = {**PERSON, "title": f"cold-{time.time()}"}  # a key never compiled before
    results["ttft_seconds"] = {
        "free": ttft(llm, prompt, SamplingParams(**one)),
        "cold_schema": ttft(llm, prompt, SamplingParams(
            **one, structured_outputs=StructuredOutputsParams(json=cold_schema))),
        "warm_schema": ttft(llm, prompt, SamplingParams(
            **one, structured_outputs=StructuredOutputsParams(json=cold_schema))),
    }
    print("TTFT (s):", {k: round(v, 4) for k, v in results["ttft_seconds"].items()})
    results["machine"] = {"cpu": _cpu_name(), "python": platform.python_version()}
    results["config"] = vars(args)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
