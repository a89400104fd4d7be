"""`pagedllm bench serve` against a real `pagedllm serve` subprocess on the tiny model, sweeping
two concurrency levels: exact output lengths, consistent latencies, a JSON and a PNG."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pagedllm.entrypoints.cli.main import main
from tests.entrypoints.conftest import API_KEY, MODEL_NAME, start_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bench_server(tiny_llama_dir, tmp_path_factory):
    log_path = str(tmp_path_factory.mktemp("bench_server") / "server.log")
    remote = start_server(
        tiny_llama_dir,
        log_path,
        "--api-key",
        API_KEY,
        "--served-model-name",
        MODEL_NAME,
        "--kv-cache-memory",
        "16MiB",
    )
    try:
        yield remote
    finally:
        remote.stop()


def test_serve_sweep(bench_server, tiny_llama_dir, tmp_path, capsys):
    out, plot = tmp_path / "serve.json", tmp_path / "serve.png"
    assert (
        main(
            [
                "bench",
                "serve",
                "--base-url",
                bench_server.url,
                "--api-key",
                API_KEY,
                "--model",
                tiny_llama_dir,
                "--concurrency",
                "1",
                "3",
                "--num-prompts",
                "4",
                "--input-len",
                "10",
                "--output-len",
                "6",
                "--output-json",
                str(out),
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    record = json.loads(out.read_text())
    assert record["served_model_name"] == MODEL_NAME
    levels = record["results"]
    assert [lv["max_concurrency"] for lv in levels] == [1, 3]
    for level in levels:
        assert (level["completed"], level["failed"]) == (4, 0), level["errors"]
        assert level["output_tokens"] == 4 * 6 and level["exact_output_lens"]
        assert level["input_tokens"] == 4 * 10
        ttft, e2e, tpot = level["ttft_ms"], level["e2e_ms"], level["tpot_ms"]
        assert 0 < ttft["mean"] < e2e["mean"]
        assert ttft["median"] <= ttft["p90"] <= ttft["p99"]
        assert 0 < tpot["mean"] < e2e["mean"]
        # (0 when every stream arrived in one chunk: a server that outpaces its client sends
        # the tokens produced meanwhile together, so no gap between tokens is observed)
        assert 0 <= level["itl_ms"]["mean"] < e2e["mean"]
        assert level["output_tok_s"] == pytest.approx(24 / level["duration_s"])
        assert level["request_throughput"] == pytest.approx(4 / level["duration_s"])
    printed = capsys.readouterr().out
    assert "concurrency 1" in printed and "concurrency 3" in printed and "TPOT" in printed
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.read_bytes()[:4] == b"\x89PNG"


def test_serve_reports_a_missing_server(tmp_path):
    with pytest.raises(ConnectionError, match="no server at"):
        main(
            [
                "bench",
                "serve",
                "--base-url",
                "http://127.0.0.1:9",
                "--num-prompts",
                "1",
                "--output-json",
                str(tmp_path / "x.json"),
            ]
        )


def test_client_resends_when_server_drops_a_kept_alive_connection():
    """A server that closes a connection without answering (llama-server does so to idle
    kept-alive ones) costs one retry, not a failed request; a second drop is a failure."""
    import asyncio

    from pagedllm.benchmarks.datasets import SampleRequest
    from pagedllm.benchmarks.serve_client import make_client, stream_completion

    body = b'data: {"choices": [{"text": "a"}]}\n\ndata: {"choices": [], "usage": ' \
        b'{"completion_tokens": 1}}\n\ndata: [DONE]\n\n'  # fmt: skip

    async def scenario(drops: int) -> tuple[bool, int]:
        seen = 0

        async def handle(reader, writer):
            nonlocal seen
            await reader.readuntil(b"\r\n\r\n")
            seen += 1
            if seen <= drops:
                writer.close()  # no response at all
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, make_client(None, 10.0) as client:
            result = await stream_completion(client, f"http://127.0.0.1:{port}/v1/completions",
                                             "m", SampleRequest([5, 6, 7], 1))  # fmt: skip
        return result.success, seen

    assert asyncio.run(scenario(drops=1)) == (True, 2)
    assert asyncio.run(scenario(drops=2)) == (False, 2)
