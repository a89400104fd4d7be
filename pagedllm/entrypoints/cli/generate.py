"""`pagedllm generate`: offline generation for one prompt or a file of prompts."""

from __future__ import annotations

import argparse
import json
import sys

from pagedllm.entrypoints.cli.engine_flags import add_engine_args, engine_args_from


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate offline for a prompt or a file of prompts",
        description="Run the engine in this process on one prompt or a file of prompts (one per "
                    "line, or a JSON list) and print the completions.")
    parser.add_argument("model", nargs="?", default=None,
                        help="HF directory, .gguf file or name (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--prompt", "-p", action="append", default=None,
                        help="a prompt (repeatable)")
    parser.add_argument("--prompt-file", default=None, help="file with one prompt per line")
    parser.add_argument("--chat", action="store_true",
                        help="wrap each prompt as a user message in the chat template")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely (0: off)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    add_engine_args(parser)
    parser.set_defaults(func=run)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            prompts.extend(json.loads(text))
        else:
            prompts.extend(line for line in text.splitlines() if line.strip())
    if not prompts:
        prompts = ["The capital of France is"]
    return prompts


def run(args: argparse.Namespace) -> int:
    from pagedllm import LLM, SamplingParams

    llm = LLM(**_llm_kwargs(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k)
    prompts = _read_prompts(args)
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    else:
        outputs = llm.generate(prompts, params)
    for prompt, output in zip(prompts, outputs):
        completion = output.outputs[0]
        if args.json:
            print(json.dumps({"prompt": prompt, "text": completion.text,
                              "token_ids": completion.token_ids,
                              "finish_reason": completion.finish_reason}))
        else:
            print(f"--- {prompt!r}\n{completion.text}  [{completion.finish_reason}]")
    sys.stdout.flush()
    return 0


def _llm_kwargs(args: argparse.Namespace) -> dict:
    from dataclasses import asdict

    return asdict(engine_args_from(args))
