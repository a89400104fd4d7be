"""Helpers of the `pagedllm chat` and `pagedllm complete` clients (flags, the OpenAI client)."""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_URL = "http://localhost:8000/v1"


def add_client_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--url", default=DEFAULT_URL,
                       help=f"base URL of the server's OpenAI API (default {DEFAULT_URL})")
    group.add_argument("--model", default=None,
                       help="model name to request (default: the first one /v1/models lists)")
    group.add_argument("--api-key", default=None,
                       help="API key, if the server requires one (default: $PAGEDLLM_API_KEY, "
                            "else $OPENAI_API_KEY)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--max-tokens", type=int, default=None,
                          help="most tokens per reply (default: the server's)")
    sampling.add_argument("--temperature", type=float, default=None,
                          help="sampling temperature, 0 = greedy (default: the server's, 1.0)")
    sampling.add_argument("--seed", type=int, default=None, help="sampling seed")


def make_client(args: argparse.Namespace) -> tuple[Any, str]:
    """(openai.OpenAI client, model name)."""
    import os

    import openai

    from pagedllm import envs

    api_key = args.api_key or envs.api_key() or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    client = openai.OpenAI(base_url=args.url, api_key=api_key)
    model = args.model or client.models.list().data[0].id
    return client, model


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    return {k: v for k, v in kwargs.items() if v is not None}


def read_line(prompt: str) -> str | None:
    """A line from the user; None at EOF or Ctrl-C."""
    try:
        return input(prompt)
    except (EOFError, KeyboardInterrupt):
        print()
        return None
