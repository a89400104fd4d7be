"""The serving benchmark's client: streamed /v1/completions requests with token-id prompts,
sent at Poisson arrival times (or all at once) under an optional concurrency cap."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import Any

from pagedllm.benchmarks.datasets import SampleRequest
from pagedllm.benchmarks.stats import RequestResult


def completion_payload(model: str, request: SampleRequest) -> dict[str, Any]:
    """Exactly request.output_len tokens: greedy, max_tokens, ignore_eos; usage in the stream."""
    return {
        "model": model,
        "prompt": request.prompt_token_ids,
        "max_tokens": request.output_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_completion(
    client: Any, url: str, model: str, request: SampleRequest
) -> RequestResult:
    """Send one request and time its chunks; failures are recorded, never raised."""
    result = RequestResult(request.prompt_len, request.output_len)
    arrivals: list[float] = []  # when each chunk with content came
    start = time.perf_counter()
    try:
        async with _open_stream(client, url, completion_payload(model, request)) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return result
            async for line in resp.aiter_lines():
                chunk = _parse_sse(line)
                if chunk is None:
                    continue
                if "error" in chunk:
                    result.error = str(chunk["error"].get("message", chunk["error"]))
                    return result
                if chunk.get("choices"):
                    arrivals.append(time.perf_counter())
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
    except Exception as e:  # a failed request is a result, not a crash
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.latency = time.perf_counter() - start
    if not arrivals:
        result.error = "no content chunk received"
        return result
    result.success = True
    result.ttft = arrivals[0] - start
    result.itl = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return result


class _open_stream:
    """client.stream("POST", ...), sent again once if the server closed the kept-alive
    connection before answering (httpx raises RemoteProtocolError then; llama-server's HTTP
    library closes idle connections after 5 s and after a number of requests)."""

    def __init__(self, client: Any, url: str, payload: dict[str, Any]) -> None:
        self.client, self.url, self.payload = client, url, payload
        self.stream: Any = None

    async def __aenter__(self) -> Any:
        import httpx

        for attempt in range(2):
            self.stream = self.client.stream("POST", self.url, json=self.payload)
            try:
                return await self.stream.__aenter__()
            except httpx.RemoteProtocolError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.stream.__aexit__(*exc)


def _parse_sse(line: str) -> dict | None:
    """The JSON of a `data:` line; None for anything else (blank lines, `[DONE]`)."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    return None if not data or data == "[DONE]" else json.loads(data)


async def run_requests(
    client: Any,
    url: str,
    model: str,
    requests: list[SampleRequest],
    request_rate: float,
    max_concurrency: int | None,
    seed: int,
) -> tuple[list[RequestResult], float]:
    """All requests, each sent at its arrival time: exponential gaps with mean 1/request_rate
    (a Poisson process; inf: all at once); at most max_concurrency in flight. Returns the results
    in request order and the wall time from the first send to the last response."""
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    rng = random.Random(seed)

    async def one(request: SampleRequest) -> RequestResult:
        if limit is None:
            return await stream_completion(client, url, model, request)
        async with limit:
            return await stream_completion(client, url, model, request)

    start = time.perf_counter()
    tasks = []
    for i, request in enumerate(requests):
        if i and not math.isinf(request_rate):
            await asyncio.sleep(rng.expovariate(request_rate))
        tasks.append(asyncio.create_task(one(request)))
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - start


def make_client(api_key: str | None, timeout_s: float) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s), limits=limits)


async def served_model_name(client: Any, base_url: str, ready_timeout_s: float = 300.0) -> str:
    """The server's first model (GET /v1/models), waiting while it answers 503 (still loading);
    a clear error when nothing answers."""
    import asyncio
    import time

    import httpx

    deadline = time.monotonic() + ready_timeout_s
    while True:
        try:
            resp = await client.get(f"{base_url}/v1/models")
        except httpx.TransportError as e:
            raise ConnectionError(
                f"no server at {base_url} ({e}); start one with `pagedllm serve MODEL`"
            ) from e
        if resp.status_code != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    if resp.status_code != 200:
        raise ConnectionError(f"GET {base_url}/v1/models: HTTP {resp.status_code} {resp.text}")
    return resp.json()["data"][0]["id"]
