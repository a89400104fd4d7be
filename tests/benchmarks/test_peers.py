"""Peer selection and the llama.cpp and HF token stamps (against stand-in modules, since
llama-cpp-python and OpenVINO GenAI are optional extras), and the plot's fallback without
matplotlib."""

from __future__ import annotations

import argparse
import builtins
import sys
import types

import pytest

from pagedllm.benchmarks import peers
from pagedllm.benchmarks.peers import (
    LLAMACPP_MISSING,
    OPENVINO_MISSING,
    LlamaCppRunner,
    _HFTokenStamps,
    add_peer_args,
    make_peer,
    selected_peers,
)
from pagedllm.benchmarks.timing import TokenClock
from pagedllm.model_executor.model_loader.resolve import ModelSource


def test_selection(monkeypatch, capsys):
    monkeypatch.setattr(peers, "llamacpp_available", lambda: False)
    monkeypatch.setattr(peers, "openvino_available", lambda: False)
    assert selected_peers(None) == ["hf"]
    out = capsys.readouterr().out
    assert LLAMACPP_MISSING in out and OPENVINO_MISSING in out
    assert selected_peers(["openvino", "hf"]) == ["hf"]
    assert OPENVINO_MISSING in capsys.readouterr().out
    assert selected_peers(["none"]) == []
    monkeypatch.setattr(peers, "llamacpp_available", lambda: True)
    monkeypatch.setattr(peers, "openvino_available", lambda: True)
    assert selected_peers(None) == ["hf", "llamacpp", "openvino"]
    assert selected_peers(["llamacpp", "llamacpp"]) == ["llamacpp"]
    assert selected_peers(["openvino"]) == ["openvino"]
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="cannot be combined"):
        selected_peers(["none", "openvino"])


def test_peer_flag():
    parser = argparse.ArgumentParser()
    add_peer_args(parser, "hf batch")
    assert parser.parse_args(["--peers", "openvino", "llamacpp"]).peers == ["openvino", "llamacpp"]
    assert parser.parse_args([]).peers is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--peers", "vllm"])


@pytest.mark.parametrize("name, label", [("llamacpp", "llama.cpp"), ("openvino", "OpenVINO")])
def test_gguf_only_peers_skip_hf_directories(name, label, capsys):
    source = ModelSource("hf", "/some/dir", None, "tiny")
    assert make_peer(name, source, "float32", 1, 64) is None
    out = capsys.readouterr().out
    assert f"{label}" in out and "needs a GGUF" in out and "tiny" in out and "skipped" in out


def test_hf_token_stamps_count_each_row_up_to_its_length():
    clock = TokenClock(5)
    stamps = _HFTokenStamps(clock, range(2, 5), [9, 9, 3, 1, 2])
    assert stamps.new_tokens == 3  # the batch runs to its longest output
    stamps.put("prompt ids")  # the first call carries the prompt, not a token
    assert clock.counts() == [0, 0, 0, 0, 0]
    for _ in range(3):
        stamps.put("one token per row")
    assert clock.counts() == [0, 0, 3, 1, 2]


class FakeLlama:
    """Llama's generate: an endless token stream from the prompt (it never stops on EOS)."""

    instances: list[FakeLlama] = []

    def __init__(self, model_path: str, **kwargs) -> None:
        self.model_path, self.kwargs = model_path, kwargs
        self.resets, self.calls, self.yielded = 0, [], 0
        FakeLlama.instances.append(self)

    def reset(self) -> None:
        self.resets += 1

    def generate(self, tokens, **sampling):
        self.calls.append((list(tokens), sampling))
        while True:
            self.yielded += 1
            yield 2  # EOS every time: must not end the generation


def test_llamacpp_runner(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama))
    source = ModelSource("gguf", "/models", "m.Q4_0.gguf", "m")
    runner = make_peer("llamacpp", source, "float32", 1, n_ctx=96)
    assert isinstance(runner, LlamaCppRunner)
    llama = FakeLlama.instances[-1]
    assert llama.model_path == "/models/m.Q4_0.gguf" and llama.kwargs["n_ctx"] == 96
    assert llama.kwargs["n_threads"] >= 1
    run = runner.generate_timed([[101, 102], [103]], [5, 3])
    assert run.elapsed_s >= 0 and runner.single_stream
    assert [len(t) for t in run.token_times] == [5, 3]
    times = [t for row in run.token_times for t in row]
    assert times == sorted(times)  # one stream after the other
    assert llama.yielded == 8 and llama.resets == 2  # exact lengths, no KV reuse
    assert [c[0] for c in llama.calls] == [[101, 102], [103]]
    assert all(c[1]["temp"] == 0.0 and c[1]["top_k"] == 1 for c in llama.calls)


def test_plot_without_matplotlib(monkeypatch, tmp_path, capsys):
    from pagedllm.benchmarks import plot

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    record = {
        "model": "m",
        "results": [{"engine": "pagedllm", "output_tok_s": 1.0, "requests_per_s": 1.0}],
    }
    assert plot.plot_throughput(record, str(tmp_path / "p.png")) is None
    assert plot.MISSING in capsys.readouterr().out
    assert not (tmp_path / "p.png").exists()
