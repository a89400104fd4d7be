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
        assert level["itl_ms"]["mean"] > 0
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
