"""`pagedllm bench latency | throughput` end to end on the tiny random Llama with the HF peer:
the JSON holds both engines, exact token counts, the ratio of their numbers and the step
profile; the plot is a PNG."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pagedllm.entrypoints.cli.main import main

pytestmark = pytest.mark.timeout(300)
ENGINE_FLAGS = ["--kv-cache-memory", "16MiB", "--max-num-seqs", "8"]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _run(argv: list[str], path) -> dict:
    assert main(argv + ["--output-json", str(path)]) == 0
    with open(path) as f:
        return json.load(f)


def _assert_png(path) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_latency_with_hf_peer(tiny_llama_dir, tmp_path, capsys):
    plot = tmp_path / "latency.png"
    argv = [
        "bench",
        "latency",
        "--model",
        tiny_llama_dir,
        "--batch-sizes",
        "1",
        "3",
        "--input-len",
        "12",
        "--output-len",
        "5",
        "--num-iters",
        "2",
        "--peers",
        "hf",
        "--plot",
        str(plot),
        *ENGINE_FLAGS,
    ]
    record = _run(argv, tmp_path / "latency.json")
    out = capsys.readouterr().out
    assert record["benchmark"] == "latency"
    assert record["command"] == "pagedllm " + " ".join(
        argv + ["--output-json", str(tmp_path / "latency.json")]
    )
    machine = record["machine"]
    assert machine["logical_cores"] >= 1 and machine["torch"] and machine["cpu_model"]
    assert [row["batch_size"] for row in record["results"]] == [1, 3]
    assert set(record["peers"]) == {"hf_transformers"}
    for row in record["results"]:
        ours, hf = row["engines"]["pagedllm"], row["engines"]["hf_transformers"]
        for stats in (ours, hf):
            lat = stats["latency_s"]
            assert 0 < lat["median"] <= lat["p90"] <= lat["p99"]
            assert stats["prefill_latency_s"]["mean"] < lat["mean"]
            assert stats["decode_tok_s"] > 0 and stats["iters"] == 2
            # both stamp each token: decode from the tokens' times, no 1-token runs
            assert stats["timing"] == "token_timestamps"
            assert stats["decode_tok_s"] == pytest.approx(
                row["batch_size"] * stats["decode_tok_s_per_request"]
            )
            assert 0 < stats["ttft_s"]["mean"] <= stats["prefill_latency_s"]["mean"]
        ratio = row["ratios"]["hf_transformers"]
        assert ratio["decode_tok_s"] == pytest.approx(ours["decode_tok_s"] / hf["decode_tok_s"])
        assert ratio["e2e_tok_s"] == pytest.approx(
            hf["latency_s"]["mean"] / ours["latency_s"]["mean"]
        )
        # The profile covers exactly the timed full runs: 2 iterations x 5 steps.
        profile = row["profile"]
        assert profile["steps"] == 10
        assert set(profile["phases"]) >= {
            "schedule",
            "prepare_inputs",
            "forward",
            "sample",
            "update",
            "output",
            "other",
        }
        total = sum(p["percent"] for p in profile["phases"].values())
        assert total == pytest.approx(100.0)
    assert "pagedllm / hf_transformers = " in out and "ms/step" in out
    if HAS_MATPLOTLIB:
        _assert_png(plot)


def test_throughput_with_hf_peer(tiny_llama_dir, tmp_path, capsys):
    argv = [
        "bench",
        "throughput",
        "--model",
        tiny_llama_dir,
        "--num-prompts",
        "5",
        "--min-input",
        "4",
        "--max-input",
        "20",
        "--min-output",
        "2",
        "--max-output",
        "6",
        "--peers",
        "hf",
        "--hf-batch-size",
        "2",
        *ENGINE_FLAGS,
    ]
    record = _run(argv, tmp_path / "throughput.json")
    ours, hf = record["results"]
    assert (ours["engine"], hf["engine"]) == ("pagedllm", "hf_transformers")
    workload = record["workload"]
    assert workload["num_requests"] == 5
    assert 4 <= workload["input_len_min"] <= workload["input_len_max"] <= 20
    assert 2 <= workload["output_len_min"] <= workload["output_len_max"] <= 6
    for stats in (ours, hf):
        assert stats["num_requests"] == 5
        assert stats["output_tokens"] == ours["output_tokens"]
        assert stats["output_tok_s"] == pytest.approx(stats["output_tokens"] / stats["elapsed_s"])
        assert stats["total_tok_s"] > stats["output_tok_s"]
    assert hf["ratios"]["output_tok_s"] == pytest.approx(ours["output_tok_s"] / hf["output_tok_s"])
    assert ours["profile"]["steps"] >= workload["output_len_max"]
    assert f"pagedllm / hf_transformers = {hf['ratios']['output_tok_s']:.2f}x" in (
        capsys.readouterr().out
    )


def test_throughput_sharegpt_without_peers(tiny_llama_dir, tmp_path):
    path = tmp_path / "sharegpt.json"
    path.write_text(
        json.dumps(
            [
                {
                    "conversations": [
                        {"from": "human", "value": "What is the capital of France? " * (i + 1)},
                        {"from": "gpt", "value": "The capital of France is Paris."},
                    ]
                }
                for i in range(3)
            ]
        )
    )
    record = _run(
        [
            "bench",
            "throughput",
            "--model",
            tiny_llama_dir,
            "--dataset-name",
            "sharegpt",
            "--dataset-path",
            str(path),
            "--peers",
            "none",
            *ENGINE_FLAGS,
        ],
        tmp_path / "out.json",
    )
    assert [r["engine"] for r in record["results"]] == ["pagedllm"]
    assert record["results"][0]["num_requests"] == 3


def test_latency_refuses_a_batch_larger_than_max_num_seqs(tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="max-num-seqs 8"):
        main(
            [
                "bench",
                "latency",
                "--model",
                tiny_llama_dir,
                "--batch-size",
                "9",
                "--peers",
                "none",
                "--output-json",
                str(tmp_path / "x.json"),
                *ENGINE_FLAGS,
            ]
        )


def test_speculative_pauses_drafting_on_one_engine(tiny_llama_factory, tmp_path):
    """`bench speculative` compares one engine with drafting on and paused: the paused runs
    draft nothing, the others do, and both give the same greedy tokens."""
    model = tiny_llama_factory(max_position_embeddings=2048)  # the code prompt: ~520 tokens
    record = _run(["bench", "speculative", "--model", model, "--output-len", "24",
                   "--rounds", "1", "--sweep-batch-sizes", "2", "--no-llamacpp",
                   "--speculative-config",
                   '{"method": "ngram", "num_speculative_tokens": 4, "draft_token_cost": 0.05}',
                   *ENGINE_FLAGS], tmp_path / "spec.json")
    results = record["results"][0]
    for workload in ("edit", "code", "chat"):
        on, off = results[workload]["pagedllm+spec"], results[workload]["pagedllm"]
        assert off["acceptance_rate"] is None  # nothing drafted while paused
        assert on["tokens"] == off["tokens"]
    assert any(results[w]["pagedllm+spec"]["acceptance_rate"] is not None
               for w in ("edit", "code", "chat"))
    assert record["batch_sweep"][0]["batch_size"] == 2
