"""Property-based API fuzzing with schemathesis against the server's own /openapi.json: every
operation gets a few generated requests (fixed: derandomized, ~200 in all); none may answer a
5xx, and every documented response must match its schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.entrypoints.conftest import serve_module

schema = schemathesis.pytest.from_fixture("openapi_schema")


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    yield from serve_module(tiny_llama_dir, tmp_path_factory, "schemathesis",
                            "--served-model-name", "tiny", "--kv-cache-memory", "16MiB",
                            "--max-num-seqs", "8")


@pytest.fixture(scope="module")
def openapi_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case):
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=60)
