"""`pagedllm complete`: text completion against a running server (like `vllm complete`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pagedllm.entrypoints.openai.cli_client import (
    add_client_args,
    make_client,
    read_line,
    sampling_kwargs,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "complete", help="complete prompts with a running pagedllm (or OpenAI-compatible) server",
        description="Each line you type is sent to /v1/completions and its completion streams "
                    "back. Ctrl-D or Ctrl-C quits.")
    parser.add_argument("-q", "--quick", metavar="PROMPT", default=None,
                        help="complete this one prompt, print the completion and exit")
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    client, model = make_client(args)
    if args.quick is not None:
        _complete(client, model, args.quick, args)
        return 0
    print(f"Using model {model}. Ctrl-D to quit.")
    while (line := read_line("> ")) is not None:
        _complete(client, model, line, args)
    return 0


def _complete(client: Any, model: str, prompt: str, args: argparse.Namespace) -> None:
    stream = client.completions.create(model=model, prompt=prompt, stream=True,
                                       **sampling_kwargs(args))
    for chunk in stream:
        if chunk.choices:
            sys.stdout.write(chunk.choices[0].text)
            sys.stdout.flush()
    print()
