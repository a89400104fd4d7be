"""`pagedllm chat`: an interactive chat against a running server (like `vllm chat`)."""

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
        "chat", help="chat with a running pagedllm (or any OpenAI-compatible) server",
        description="Interactive chat through /v1/chat/completions; replies stream as they are "
                    "generated and the conversation is kept. Ctrl-D or Ctrl-C quits.")
    parser.add_argument("--system-prompt", default=None,
                        help="system message that starts the conversation")
    parser.add_argument("-q", "--quick", metavar="MESSAGE", default=None,
                        help="send this one message, print the reply and exit")
    add_client_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    client, model = make_client(args)
    conversation: list[dict[str, Any]] = []
    if args.system_prompt:
        conversation.append({"role": "system", "content": args.system_prompt})
    if args.quick is not None:
        conversation.append({"role": "user", "content": args.quick})
        _reply(client, model, conversation, args)
        return 0
    print(f"Using model {model}. Ctrl-D to quit.")
    while (line := read_line("> ")) is not None:
        conversation.append({"role": "user", "content": line})
        conversation.append({"role": "assistant",
                             "content": _reply(client, model, conversation, args)})
    return 0


def _reply(client: Any, model: str, conversation: list[dict[str, Any]],
           args: argparse.Namespace) -> str:
    stream = client.chat.completions.create(model=model, messages=conversation, stream=True,
                                            **sampling_kwargs(args))
    parts = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            sys.stdout.write(parts[-1])
            sys.stdout.flush()
    print()
    return "".join(parts)
