"""Property-based fuzzing of the server from its own /openapi.json (schemathesis): a bounded,
derandomized run over every operation of a real `pagedllm serve` (the shared tiny server): about
3,500 requests in all (schemathesis' coverage phase of each operation's boundary values plus 8
generated examples), mostly malformed or out of range. Whatever the body, the server answers
without a 5xx, and it keeps serving afterwards."""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = pytest.mark.timeout(600)

EXAMPLES_PER_OPERATION = 12
"""Generated examples per operation: bounded so the suite stays fast."""


@pytest.fixture(scope="module")
def api_schema(shared_tiny_server):
    schema = schemathesis.openapi.from_url(f"{shared_tiny_server.url}/openapi.json")
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case):
    response = case.call(timeout=60)
    case.validate_response(response, checks=(not_a_server_error,))


def test_still_serving_after_the_fuzzing(shared_tiny_server):
    response = httpx.post(f"{shared_tiny_server.url}/v1/completions", timeout=60,
                          json={"model": "tiny", "prompt": "Hello", "max_tokens": 3})
    assert response.status_code == 200, response.text
