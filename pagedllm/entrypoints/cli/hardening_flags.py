"""`pagedllm serve` flags of production hardening: admission control, API keys with limits,
deadlines and engine supervision."""

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
    group.add_argument("--request-timeout", type=_positive_float, default=None,
                       help="seconds a generation may take, queue wait included; past it the "
                            "request is aborted (KV freed) and answers what it has with "
                            'finish_reason "length" (default: no limit)')
    group.add_argument("--trust-request-chat-template", action="store_true",
                       help="run a chat_template sent in a request (sandboxed, bounded); "
                            "without it such a request gets 400 (vLLM's flag)")
    group.add_argument("--api-keys-file", default=None,
                       help="JSON or YAML file: key -> {name, requests_per_minute, "
                            "tokens_per_minute, max_concurrent, allowed_models}; each key gets "
                            "its own identity, limits (429) and metrics (--api-key still works "
                            "beside it, without limits)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="accepted for vLLM's command lines and ignored: pagedllm never runs "
                            "Python code from a model folder (a model that needs it is refused "
                            "with a message saying so)")
    group.add_argument("--restart-engine-on-failure", action=argparse.BooleanOptionalAction,
                       default=True,
                       help="when the engine-core process dies (crash, kill -9, out of memory), "
                            "in-flight requests get an error at once and a new core starts while "
                            "the server keeps its socket (/health answers 503 meanwhile); with "
                            "--no-restart-engine-on-failure the server stays up and unhealthy "
                            "(default: restart)")
    group.add_argument("--engine-hang-timeout", type=_non_negative_float, default=120.0,
                       help="seconds the engine core may go without any output while requests "
                            "are in flight before it is killed as hung (then restarted as after "
                            "a crash); 0 disables (default 120)")
    group.add_argument("--max-engine-restarts", type=_positive_int, default=None,
                       help="most engine-core restarts over the server's life; past them the "
                            "server stays up and unhealthy (default: no limit)")


def hardening_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerSettings fields these flags set."""
    from pagedllm.entrypoints.openai.admission import AdmissionLimits
    from pagedllm.entrypoints.openai.engine_supervisor import RestartPolicy
    from pagedllm.logger import init_logger

    if args.trust_remote_code:
        init_logger(__name__).warning(
            "--trust-remote-code is ignored: pagedllm never runs code from a model folder")

    settings: dict[str, Any] = {"admission": AdmissionLimits(
        max_num_queued_requests=args.max_num_queued_requests,
        max_num_queued_tokens=args.max_num_queued_tokens),
        "request_timeout": args.request_timeout,
        "trust_request_chat_template": args.trust_request_chat_template,
        "restart_policy": RestartPolicy(enabled=args.restart_engine_on_failure,
                                        max_restarts=args.max_engine_restarts,
                                        startup_timeout=args.engine_startup_timeout,
                                        hang_timeout=args.engine_hang_timeout or None)}
    if args.api_keys_file:
        from pagedllm.entrypoints.openai.api_keys import load_api_keys

        try:
            settings["api_keys"] = load_api_keys(args.api_keys_file)
        except (OSError, ValueError) as e:
            raise SystemExit(f"pagedllm serve: bad --api-keys-file: {e}") from e
    return settings


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from e
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _non_negative_float(value: str) -> float:
    number = _positive_float(value) if value.strip() not in ("0", "0.0") else 0.0
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from e
    if not number > 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return number
