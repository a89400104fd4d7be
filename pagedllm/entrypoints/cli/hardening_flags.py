"""`pagedllm serve` flags of production hardening: admission control."""

from __future__ import annotations

import argparse
from typing import Any


def add_hardening_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("production hardening")
    group.add_argument("--max-num-queued-requests", type=_positive_int, default=None,
                       help="most requests (samples) waiting for the engine; more get 503 with "
                            "Retry-After (default: no limit)")
    group.add_argument("--max-num-queued-tokens", type=_positive_int, default=None,
                       help="most prompt tokens of the waiting requests; more get 503 with "
                            "Retry-After (default: no limit)")


def hardening_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerSettings fields these flags set."""
    from pagedllm.entrypoints.openai.admission import AdmissionLimits

    settings: dict[str, Any] = {"admission": AdmissionLimits(
        max_num_queued_requests=args.max_num_queued_requests,
        max_num_queued_tokens=args.max_num_queued_tokens)}
    return settings


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from e
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number
