"""--otlp-traces-endpoint: a real `pagedllm serve` sends one OpenTelemetry span per request to an
OTLP/HTTP collector the test runs; the span joins the caller's trace (W3C traceparent) and carries
the request's usage and latencies with vLLM's attribute names."""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.entrypoints.conftest import serve_module

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
pytestmark = pytest.mark.timeout(300)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


class _Collector(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def collector():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    server.shutdown()


@pytest.fixture(scope="module")
def traced_server(tiny_llama_dir, tmp_path_factory, collector):
    saved = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # export spans every 0.1 s, not every 5 s
    try:
        yield from serve_module(tiny_llama_dir, tmp_path_factory, "tracing",
                                "--kv-cache-memory", "16MiB", "--served-model-name", "tiny",
                                "--otlp-traces-endpoint", collector)
    finally:
        if saved is None:
            os.environ.pop("OTEL_BSP_SCHEDULE_DELAY", None)
        else:
            os.environ["OTEL_BSP_SCHEDULE_DELAY"] = saved


def _spans() -> list:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = []
    for body in _Collector.bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return spans


def _attributes(span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def test_a_span_per_request_joins_the_callers_trace(traced_server):
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
    response = httpx.post(f"{traced_server.url}/v1/completions", timeout=60,
                          headers={"traceparent": traceparent},
                          json={"model": "tiny", "prompt": "Hello there", "max_tokens": 5,
                                "temperature": 0.0, "ignore_eos": True})
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    untraced = httpx.post(f"{traced_server.url}/v1/completions", timeout=60,
                          json={"model": "tiny", "prompt": "Hi", "max_tokens": 3})
    assert untraced.status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(_spans()) < 2:
        time.sleep(0.1)
    spans = _spans()
    assert len(spans) == 2, spans
    ours = next(s for s in spans if s.trace_id.hex() == TRACE_ID)
    other = next(s for s in spans if s is not ours)
    assert ours.name == "llm_request" and ours.parent_span_id.hex() == PARENT_SPAN_ID
    assert other.trace_id.hex() != TRACE_ID and not other.parent_span_id  # a new root
    attrs = _attributes(ours)
    assert attrs["gen_ai.response.model"] == "tiny"
    assert attrs["gen_ai.usage.prompt_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.completion_tokens"] == usage["completion_tokens"] == 5
    assert attrs["gen_ai.request.max_tokens"] == 5 and attrs["gen_ai.request.temperature"] == 0.0
    assert attrs["gen_ai.response.finish_reason"] == "length"
    assert 0 < attrs["gen_ai.latency.time_to_first_token"] <= attrs["gen_ai.latency.e2e"]
    duration = (ours.end_time_unix_nano - ours.start_time_unix_nano) / 1e9
    assert duration == pytest.approx(attrs["gen_ai.latency.e2e"], abs=1e-3)
    assert abs(ours.start_time_unix_nano / 1e9 - time.time()) < 60
