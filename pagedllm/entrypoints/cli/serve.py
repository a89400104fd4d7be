"""`pagedllm serve`: the OpenAI-compatible HTTP server (vLLM's `vllm serve`)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from pagedllm.entrypoints.cli.engine_flags import (
    add_engine_args,
    check_parser_name,
    engine_args_from,
)
from pagedllm.entrypoints.cli.hardening_flags import add_hardening_args, hardening_settings

if TYPE_CHECKING:
    from pagedllm.entrypoints.openai.serving_models import LoRAModulePath

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Start an OpenAI-compatible server (/v1/completions, /v1/chat/completions, "
                    "/v1/responses, /v1/embeddings, /v1/models, /tokenize, /detokenize, /health, "
                    "/version, /metrics; Anthropic's /v1/messages; Ollama's /api/*). The engine "
                    "runs in its own process; /health answers 503 until the model is loaded.")
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"HF directory, .gguf file or model name (default: {DEFAULT_MODEL})")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    server.add_argument("--served-model-name", nargs="+", default=None,
                        help="name(s) clients use in `model` (default: the model argument); the "
                             "first is reported in responses")
    server.add_argument("--api-key", default=None,
                        help="require `Authorization: Bearer KEY` on /v1, /tokenize and "
                             "/detokenize (default: $PAGEDLLM_API_KEY, else no key)")
    server.add_argument("--allowed-origins", nargs="+", default=[],
                        help="origins allowed by CORS, e.g. http://localhost:3000 or '*' "
                             "(default: none, CORS off)")
    server.add_argument("--chat-template", default=None,
                        help="file with a jinja chat template to use instead of the model's")
    server.add_argument("--max-request-body-bytes", type=int, default=16 * 1024 * 1024,
                        help="larger request bodies get 413 (default 16 MiB)")
    server.add_argument("--engine-startup-timeout", type=float, default=None,
                        help="give up (exit 1) if the model is not loaded after this many "
                             "seconds (default: wait)")
    server.add_argument("--graceful-shutdown-timeout", type=float, default=10.0,
                        help="on SIGTERM/SIGINT, seconds to let in-flight requests finish before "
                             "aborting them (default 10)")
    server.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default info)")
    server.add_argument("--access-log", action="store_true", help="log every HTTP request")
    server.add_argument("--disable-frontend", action="store_true",
                        help="do not serve the web chat page at / (default: served)")
    server.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="json: one JSON object per log line, with the request id "
                             "(X-Request-Id) of the HTTP request being served (default text)")
    server.add_argument("--otlp-traces-endpoint", default=None,
                        help="send an OpenTelemetry span per request to this OTLP endpoint, e.g. "
                             "http://localhost:4318/v1/traces (HTTP/protobuf; "
                             "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc for gRPC); a W3C "
                             "traceparent header makes it a child span; needs pagedllm[otel]")
    server.add_argument("--enable-responses-api-store", action="store_true",
                        help="keep /v1/responses results in memory (store: true) for "
                             "previous_response_id and GET /v1/responses/{id} (default off: the "
                             "store grows with traffic)")
    server.add_argument("--responses-api-store-max-size", type=_positive_int, default=1000,
                        help="most responses kept; the least recently used go first "
                             "(default 1000)")
    add_tool_args(parser)
    add_hardening_args(parser)
    _add_lora_server_args(parser)
    add_engine_args(parser)
    parser.set_defaults(func=run)


def add_tool_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tools and chat templates")
    group.add_argument("--enable-auto-tool-choice", action="store_true",
                       help='allow tool_choice "auto": the model decides whether to call tools, '
                            "and --tool-call-parser finds the calls in its text")
    group.add_argument("--tool-call-parser", default=None,
                       help="how the model writes tool calls (one of: "
                            f"{_tool_parser_names()})")
    group.add_argument("--exclude-tools-when-tool-choice-none", action="store_true",
                       help='with tool_choice "none", leave the tools out of the prompt too')
    group.add_argument("--default-chat-template-kwargs", default=None, type=_json_object,
                       help='JSON object of chat template variables for every request, e.g. '
                            '\'{"enable_thinking": false}\' (a request\'s chat_template_kwargs '
                            "win)")


def _add_lora_server_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LoRA adapters (with --enable-lora)")
    group.add_argument("--lora-modules", nargs="+", default=[], type=_lora_module,
                       help='adapters served from the start: name=path, or JSON \'{"name": ..., '
                            '"path": ..., "base_model_name": ...}\'; requests pick one by `model`')
    group.add_argument("--allow-runtime-lora-updating", action="store_true",
                       help="expose POST /v1/load_lora_adapter and /v1/unload_lora_adapter")
    group.add_argument("--lora-dir", default=None,
                       help="runtime loads may only read adapters under this directory "
                            "(symlinks resolved)")


def _lora_module(value: str) -> LoRAModulePath:
    from pagedllm.entrypoints.openai.serving_models import LoRAModulePath

    if value.lstrip().startswith("{"):
        data = _json_object(value)
        if not isinstance(data.get("name"), str) or not isinstance(data.get("path"), str):
            raise argparse.ArgumentTypeError('a JSON LoRA module needs "name" and "path"')
        return LoRAModulePath(data["name"], data["path"], data.get("base_model_name"))
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected name=path, got {value!r}")
    return LoRAModulePath(name, path)


def _tool_parser_names() -> str:
    from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS

    return ", ".join(TOOL_PARSERS.names()) or "none registered"


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from e
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _json_object(value: str) -> dict:
    try:
        data = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return data


def _log_startup(args: argparse.Namespace) -> None:
    """The command line in the log (as vLLM logs its args), with secrets redacted."""
    from pagedllm import envs
    from pagedllm.log_redaction import redact_argv, register_secret
    from pagedllm.logger import init_logger
    from pagedllm.version import __version__

    register_secret(args.api_key or envs.api_key())
    argv = getattr(args, "argv", None)
    init_logger("pagedllm.entrypoints.cli.serve").info(
        "pagedllm %s serve, args: %s", __version__,
        redact_argv(argv) if argv is not None else "(not from the command line)")


def run(args: argparse.Namespace) -> int:
    from pagedllm import envs
    from pagedllm.entrypoints.openai.api_server import build_app
    from pagedllm.entrypoints.openai.launcher import serve_http
    from pagedllm.entrypoints.openai.state import ServerSettings
    from pagedllm.logger import set_log_format

    set_log_format(args.log_format)
    _log_startup(args)

    if args.lora_modules and not args.enable_lora:
        raise SystemExit("pagedllm serve: --lora-modules requires --enable-lora")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise SystemExit("pagedllm serve: --enable-auto-tool-choice requires --tool-call-parser")
    check_parser_name("tool", args.tool_call_parser)
    check_parser_name("reasoning", args.reasoning_parser)
    chat_template = None
    if args.chat_template:
        try:
            with open(args.chat_template, encoding="utf-8") as f:
                chat_template = f.read()
        except OSError as e:
            raise SystemExit(f"pagedllm serve: cannot read --chat-template: {e}") from e
    if args.otlp_traces_endpoint:
        from pagedllm.metrics.tracing import init_tracer

        try:  # fail at start-up, not at the first finished request
            init_tracer(args.otlp_traces_endpoint)
        except ValueError as e:
            raise SystemExit(f"pagedllm serve: {e}") from e
    settings = ServerSettings(
        engine_args=engine_args_from(args),
        otlp_traces_endpoint=args.otlp_traces_endpoint,
        served_model_names=args.served_model_name or [args.model],
        api_key=args.api_key or envs.api_key(),
        allowed_origins=args.allowed_origins,
        chat_template=chat_template,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        exclude_tools_when_tool_choice_none=args.exclude_tools_when_tool_choice_none,
        default_chat_template_kwargs=args.default_chat_template_kwargs or {},
        max_request_body_bytes=args.max_request_body_bytes,
        disable_frontend=args.disable_frontend,
        engine_startup_timeout=args.engine_startup_timeout,
        enable_responses_api_store=args.enable_responses_api_store,
        responses_api_store_max_size=args.responses_api_store_max_size,
        **hardening_settings(args),
        lora_modules=args.lora_modules,
        allow_runtime_lora_updating=args.allow_runtime_lora_updating,
        lora_dir=args.lora_dir,
    )
    app = build_app(settings)
    return serve_http(app, args.host, args.port, args.log_level,
                      args.graceful_shutdown_timeout, args.access_log, args.log_format)
