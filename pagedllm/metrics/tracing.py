"""OpenTelemetry traces (`pagedllm serve --otlp-traces-endpoint URL`, the `otel` extra).

Every finished request becomes one span, "llm_request", from its arrival to its last output, sent
over OTLP (HTTP/protobuf by default; gRPC when OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc and its
exporter is installed). The span carries vLLM's attribute names (the gen_ai.* semantic
conventions), and is a child of the caller's span when the HTTP request sent a W3C
`traceparent`: the server's middleware puts the trace headers in TRACE_HEADERS, AsyncLLM stores
them with the request, and this stat logger reads them back at the finish.

Spans are built from the front end's own timings (metrics/request_stats.py), after the fact:
nothing is traced inside the engine's step loop.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Any

from pagedllm.logger import init_logger
from pagedllm.metrics.loggers import StatLoggerBase
from pagedllm.metrics.request_stats import FinishedRequestStats, IterationStats
from pagedllm.metrics.stats import SchedulerStats

logger = init_logger(__name__)

TRACE_HEADERS: ContextVar[dict[str, str] | None] = ContextVar("pagedllm_trace_headers",
                                                              default=None)
TRACE_HEADER_NAMES = ("traceparent", "tracestate")
SPAN_NAME = "llm_request"


class SpanAttributes:
    """vLLM's span attribute names."""

    RESPONSE_MODEL = "gen_ai.response.model"
    REQUEST_ID = "gen_ai.request.id"
    REQUEST_TEMPERATURE = "gen_ai.request.temperature"
    REQUEST_TOP_P = "gen_ai.request.top_p"
    REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
    REQUEST_N = "gen_ai.request.n"
    USAGE_PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"
    USAGE_COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"
    FINISH_REASON = "gen_ai.response.finish_reason"
    LATENCY_TIME_TO_FIRST_TOKEN = "gen_ai.latency.time_to_first_token"
    LATENCY_E2E = "gen_ai.latency.e2e"
    LATENCY_TIME_PER_OUTPUT_TOKEN = "gen_ai.latency.time_per_output_token"


REQUEST_ATTRIBUTES = {"temperature": SpanAttributes.REQUEST_TEMPERATURE,
                      "top_p": SpanAttributes.REQUEST_TOP_P,
                      "max_tokens": SpanAttributes.REQUEST_MAX_TOKENS,
                      "n": SpanAttributes.REQUEST_N}
"""Sampling field -> its span attribute."""


def trace_headers_from(headers: Any) -> dict[str, str] | None:
    """The W3C trace context of an HTTP request's headers (None when it sent none)."""
    found = {name: headers[name] for name in TRACE_HEADER_NAMES if name in headers}
    return found or None


def init_tracer(endpoint: str, service_name: str = "pagedllm") -> Any:
    """An OTLP-exporting tracer; ValueError naming the extra when OpenTelemetry is missing."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        raise ValueError("--otlp-traces-endpoint needs OpenTelemetry: pip install "
                         "'pagedllm[otel]' (opentelemetry-sdk and an OTLP exporter)") from e
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(_exporter(endpoint)))
    return provider.get_tracer("pagedllm")


def _exporter(endpoint: str) -> Any:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise ValueError("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc needs "
                             "opentelemetry-exporter-otlp-proto-grpc") from e
        return OTLPSpanExporter(endpoint=endpoint)
    if protocol != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL must be http/protobuf or grpc, "
                         f"got {protocol!r}")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise ValueError("--otlp-traces-endpoint needs opentelemetry-exporter-otlp-proto-http: "
                         "pip install 'pagedllm[otel]'") from e
    return OTLPSpanExporter(endpoint=endpoint)


class OtelTraceLogger(StatLoggerBase):
    """One span per finished request."""

    def __init__(self, tracer: Any, model_name: str) -> None:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self.model_name = model_name
        self._kind = SpanKind.SERVER
        self._propagator = TraceContextTextMapPropagator()

    def record(self, scheduler_stats: SchedulerStats | None,
               iteration_stats: IterationStats | None, engine_idx: int = 0) -> None:
        if iteration_stats is None:
            return
        for finished in iteration_stats.finished_requests:
            try:
                self._span(finished)
            except Exception:  # a tracing failure must never disturb serving
                logger.exception("could not record the trace span of %s", finished.request_id)

    def _span(self, finished: FinishedRequestStats) -> None:
        parent = (self._propagator.extract(finished.trace_headers)
                  if finished.trace_headers else None)
        start_ns = int(finished.wall_arrival_time * 1e9)
        end_ns = start_ns + int(finished.e2e_latency * 1e9)
        span = self.tracer.start_span(SPAN_NAME, context=parent, kind=self._kind,
                                      start_time=start_ns)
        span.set_attribute(SpanAttributes.RESPONSE_MODEL, self.model_name)
        span.set_attribute(SpanAttributes.REQUEST_ID, finished.request_id)
        for field_name, value in finished.attributes.items():
            if value is not None and field_name in REQUEST_ATTRIBUTES:
                span.set_attribute(REQUEST_ATTRIBUTES[field_name], value)
        span.set_attribute(SpanAttributes.USAGE_PROMPT_TOKENS, finished.num_prompt_tokens)
        span.set_attribute(SpanAttributes.USAGE_COMPLETION_TOKENS,
                           finished.num_generation_tokens)
        span.set_attribute(SpanAttributes.FINISH_REASON, finished.finish_reason)
        span.set_attribute(SpanAttributes.LATENCY_E2E, finished.e2e_latency)
        if finished.time_to_first_token is not None:
            span.set_attribute(SpanAttributes.LATENCY_TIME_TO_FIRST_TOKEN,
                               finished.time_to_first_token)
        if finished.mean_time_per_output_token is not None:
            span.set_attribute(SpanAttributes.LATENCY_TIME_PER_OUTPUT_TOKEN,
                               finished.mean_time_per_output_token)
        span.end(end_time=end_ns)
