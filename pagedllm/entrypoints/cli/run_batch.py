"""`pagedllm run-batch`: an OpenAI batch file through the engine, offline (vLLM's run-batch)."""

from __future__ import annotations

import argparse

from pagedllm.entrypoints.cli.engine_flags import (
    add_engine_args,
    check_parser_name,
    engine_args_from,
)
from pagedllm.entrypoints.cli.serve import DEFAULT_MODEL, add_tool_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run-batch", help="run an OpenAI batch file (JSONL) offline",
        description="Answer each line of an OpenAI batch input file ({custom_id, method, url, "
                    "body}; url /v1/chat/completions, /v1/completions, /v1/embeddings or "
                    "/v1/responses) with the server's serving code, writing OpenAI batch output "
                    "lines as they finish. Running again with the same output file skips the "
                    "custom_ids already answered.")
    parser.add_argument("-i", "--input-file", required=True,
                        help="the batch input (JSONL; - for stdin)")
    parser.add_argument("-o", "--output-file", required=True,
                        help="the batch output (JSONL), appended to when resuming")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"HF directory, .gguf file or model name (default: {DEFAULT_MODEL})")
    parser.add_argument("--served-model-name", nargs="+", default=None,
                        help="name(s) the lines' `model` may use (default: --model)")
    parser.add_argument("--chat-template", default=None,
                        help="file with a jinja chat template to use instead of the model's")
    parser.add_argument("--max-concurrency", type=int, default=256,
                        help="most lines in flight at once (default 256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tool_args(parser)
    add_engine_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from pagedllm.entrypoints.openai.run_batch import run_batch
    from pagedllm.entrypoints.openai.state import ServerSettings

    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise SystemExit("pagedllm run-batch: --enable-auto-tool-choice requires "
                         "--tool-call-parser")
    if args.max_concurrency < 1:
        raise SystemExit("pagedllm run-batch: --max-concurrency must be at least 1")
    check_parser_name("tool", args.tool_call_parser)
    check_parser_name("reasoning", args.reasoning_parser)
    chat_template = None
    if args.chat_template:
        with open(args.chat_template, encoding="utf-8") as f:
            chat_template = f.read()
    settings = ServerSettings(
        engine_args=engine_args_from(args),
        served_model_names=args.served_model_name or [args.model],
        chat_template=chat_template,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        exclude_tools_when_tool_choice_none=args.exclude_tools_when_tool_choice_none,
        default_chat_template_kwargs=args.default_chat_template_kwargs or {},
        trust_request_chat_template=True,  # the batch file is the operator's own
    )
    try:
        answered, skipped = asyncio.run(run_batch(settings, args.input_file, args.output_file,
                                                  args.max_concurrency, not args.no_progress))
    except (OSError, ValueError, RuntimeError) as e:
        raise SystemExit(f"pagedllm run-batch: {e}") from e
    print(f"run-batch: {answered} line(s) answered, {skipped} already in {args.output_file}")
    return 0
