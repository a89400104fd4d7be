"""Peer selection and the llama.cpp runner (against a stand-in `llama_cpp` module, since
llama-cpp-python is an optional extra), and the plot's fallback without matplotlib."""

from __future__ import annotations

import builtins
import sys
import types

from pagedllm.benchmarks import peers
from pagedllm.benchmarks.peers import LLAMACPP_MISSING, LlamaCppRunner, make_peer, selected_peers
from pagedllm.model_executor.model_loader.resolve import ModelSource


def test_selection(monkeypatch, capsys):
    monkeypatch.setattr(peers, "llamacpp_available", lambda: False)
    assert selected_peers(None) == ["hf"]
    assert LLAMACPP_MISSING in capsys.readouterr().out
    assert selected_peers(["none"]) == []
    monkeypatch.setattr(peers, "llamacpp_available", lambda: True)
    assert selected_peers(None) == ["hf", "llamacpp"]
    assert selected_peers(["llamacpp", "llamacpp"]) == ["llamacpp"]


def test_llamacpp_needs_a_gguf(capsys):
    source = ModelSource("hf", "/some/dir", None, "tiny")
    assert make_peer("llamacpp", source, "float32", 1, 64) is None
    assert "needs a GGUF" in capsys.readouterr().out


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
    elapsed = runner.generate([[101, 102], [103]], [5, 3])
    assert elapsed >= 0
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
