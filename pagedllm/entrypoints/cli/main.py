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
    from pagedllm.entrypoints.cli import (
        bench,
        chat,
        collect_env,
        complete,
        generate,
        run_batch,
        serve,
    )

    serve.register(subparsers)
    chat.register(subparsers)
    complete.register(subparsers)
    generate.register(subparsers)
    bench.register(subparsers)
    collect_env.register(subparsers)
    run_batch.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as typed, for records of the run (bench)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
