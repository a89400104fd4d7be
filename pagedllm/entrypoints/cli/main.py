"""The `pagedllm` command."""

from __future__ import annotations

import argparse
import sys

from pagedllm.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pagedllm", description="pagedllm: paged-KV-cache LLM inference and serving")
    parser.add_argument("--version", action="version", version=f"pagedllm {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    from pagedllm.entrypoints.cli import chat, complete, generate, serve

    serve.register(subparsers)
    chat.register(subparsers)
    complete.register(subparsers)
    generate.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
