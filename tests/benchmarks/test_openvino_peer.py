"""The OpenVINO GenAI peer: the plugin properties that match pagedllm's precision
(--openvino-precision matched), its runners against stand-in `openvino` / `openvino_genai` modules
(OpenVINO is an optional extra, never needed by the suite), and, only where openvino-genai is
installed, the real pipelines on the packaged SmolLM2 GGUF with a tiny workload."""

from __future__ import annotations

import argparse
import sys
import types

import pytest

from pagedllm import envs
from pagedllm.benchmarks import peers
from pagedllm.benchmarks.openvino_peer import (
    OpenVINOBatchRunner,
    OpenVINOLatencyRunner,
    activation_precision,
    make_openvino_runner,
    matched_properties,
    openvino_precision,
)
from pagedllm.benchmarks.peer_runner import BatchLimits
from pagedllm.benchmarks.peers import add_peer_args, check_peer_args, make_peer, make_peers
from pagedllm.entrypoints.cli.main import main
from pagedllm.model_executor.model_loader.resolve import ModelSource


@pytest.mark.parametrize(
    "compute, kv, activations, expected",
    [
        ("float32", "auto", "int16", ("f32", "f32", 0)),  # pagedllm's defaults
        ("float32", "fp16", "int16", ("f32", "f16", 0)),
        ("float32", "int8", "int8", ("f32", "u8", 32)),
        ("float32", "auto", "int8", ("f32", "f32", 32)),
        ("bfloat16", "auto", "int16", ("bf16", "bf16", 0)),  # auto follows the compute dtype
        ("float16", "fp16", "int8", ("f16", "f16", 32)),
    ],
)
def test_matched_properties(compute, kv, activations, expected):
    assert matched_properties(compute, kv, activations) == dict(zip(
        ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE"),
        expected))  # fmt: skip


def test_matched_refuses_fp8_kv_cache():
    with pytest.raises(ValueError, match="--kv-cache-dtype fp8 has no OpenVINO equivalent"):
        matched_properties("float32", "fp8", "int16")
    with pytest.raises(ValueError, match="fp8 has no OpenVINO"):
        openvino_precision("matched", "float32", "fp8", "int16")
    # the plugin's defaults ask nothing of our settings
    assert openvino_precision("default", "float32", "fp8", "int8").properties == {}


def test_precision_modes_name_their_runner():
    default = openvino_precision("default", "float32", "auto", "int16")
    matched = openvino_precision("matched", "float32", "int8", "int16")
    assert (default.mode, default.runner_name, default.matched_to) == ("default", "openvino_genai",
                                                                       {})  # fmt: skip
    assert matched.runner_name == "openvino_genai_matched"
    assert matched.properties["KV_CACHE_PRECISION"] == "u8"
    assert matched.matched_to == {"compute_dtype": "float32", "kv_cache_dtype": "int8",
                                  "quantized_activation_dtype": "int16"}  # fmt: skip
    with pytest.raises(ValueError, match="must be one of"):
        openvino_precision("fast", "float32", "auto", "int16")


def test_activation_precision_needs_vnni_for_int8():
    assert activation_precision(0, "f32", True) == "f32 (dynamic quantization off)"
    assert activation_precision(32, "f32", True) == "int8 in groups of 32 (dynamic quantization)"
    assert "not applied" in activation_precision(32, "f32", False)
    assert "where the plugin has an int8 path" in activation_precision(32, "f32", None)


def test_openvino_precision_flag():
    parser = argparse.ArgumentParser()
    add_peer_args(parser, "hf batch")
    assert parser.parse_args([]).openvino_precision == ["default"]
    both = parser.parse_args(["--openvino-precision", "default", "matched"])
    assert both.openvino_precision == ["default", "matched"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--openvino-precision", "fp8"])


@pytest.mark.parametrize("peer_list, refused", [(None, True), (["openvino"], True),
                                                (["hf"], False), (["none"], False)])  # fmt: skip
def test_check_peer_args(peer_list, refused):
    args = argparse.Namespace(peers=peer_list, openvino_precision=["default", "matched"],
                              kv_cache_dtype="fp8")  # fmt: skip
    if refused:
        with pytest.raises(ValueError, match="fp8 has no OpenVINO equivalent"):
            check_peer_args(args)
    else:
        check_peer_args(args)  # OpenVINO does not run: nothing to match
    check_peer_args(argparse.Namespace(peers=None, openvino_precision=["default"],
                                       kv_cache_dtype="fp8"))  # fmt: skip


@pytest.mark.parametrize("bench", ["latency", "throughput"])
def test_bench_refuses_unmatchable_precision_before_loading(bench, tmp_path):
    """The model path does not exist: the refusal comes before anything loads (throughput
    makes its peers only after our engine's run)."""
    with pytest.raises(ValueError, match="fp8 has no OpenVINO equivalent"):
        main(["bench", bench, "--model", str(tmp_path / "missing.gguf"), "--peers", "openvino",
              "--openvino-precision", "matched", "--kv-cache-dtype", "fp8",
              "--output-json", str(tmp_path / "x.json")])  # fmt: skip


class FakeType:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_type_name(self) -> str:
        return self.name


class FakeCore:
    PROPERTIES = {
        "INFERENCE_PRECISION_HINT": FakeType("bf16"),
        "KV_CACHE_PRECISION": FakeType("u8"),
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32,
    }

    def get_property(self, device: str, key: str):
        assert device == "CPU"
        return self.PROPERTIES[key]


class FakeTensor:
    def __init__(self, array) -> None:
        self.array = array


class FakeConfig:
    def __init__(self, **kwargs) -> None:
        self.eos_token_id = 2
        self.__dict__.update(kwargs)


class FakeStreamerBase:
    def __init__(self) -> None:
        self.initialised = True


class FakeLLMPipeline:
    instances: list = []

    def __init__(self, path: str, device: str, **properties) -> None:
        self.path, self.device, self.properties, self.calls = path, device, properties, []
        FakeLLMPipeline.instances.append(self)

    def get_generation_config(self) -> FakeConfig:
        return FakeConfig(eos_token_id=7)

    def generate(self, inputs: FakeTensor, config: FakeConfig, streamer) -> None:
        assert streamer.initialised  # super().__init__() ran
        self.calls.append((inputs.array.tolist(), inputs.array.dtype.name, config))
        for _ in range(config.max_new_tokens):
            assert streamer.write([5]) == "RUNNING"


class FakeSchedulerConfig:
    def to_string(self) -> str:
        return f"seqs {self.max_num_seqs} tokens {self.max_num_batched_tokens}"


class FakeCBPipeline:
    instances: list = []

    def __init__(self, path: str, scheduler, device: str, properties: dict) -> None:
        self.path, self.scheduler, self.device = path, scheduler, device
        self.properties, self.calls = properties, []
        FakeCBPipeline.instances.append(self)

    def get_config(self) -> FakeConfig:
        return FakeConfig()

    def generate(self, inputs: list, configs: list) -> list:
        self.calls.append((inputs, configs))
        return [types.SimpleNamespace(m_generation_ids=[[5] * c.max_new_tokens]) for c in configs]


@pytest.fixture
def fake_openvino(monkeypatch):
    ov = types.SimpleNamespace(Core=FakeCore, Tensor=FakeTensor)
    genai = types.SimpleNamespace(
        LLMPipeline=FakeLLMPipeline,
        ContinuousBatchingPipeline=FakeCBPipeline,
        SchedulerConfig=FakeSchedulerConfig,
        GenerationConfig=FakeConfig,
        StreamerBase=FakeStreamerBase,
        StreamingStatus=types.SimpleNamespace(RUNNING="RUNNING"),
        get_version=lambda: "fake-1.0",
    )
    monkeypatch.setitem(sys.modules, "openvino", ov)
    monkeypatch.setitem(sys.modules, "openvino_genai", genai)


def _assert_greedy_exact(config, n: int) -> None:
    assert config.max_new_tokens == config.min_new_tokens == n
    assert config.ignore_eos is True and config.do_sample is False


def test_latency_runner_on_stand_in(fake_openvino, capsys):
    source = ModelSource("gguf", "/models", "m.Q4_1.gguf", "m")
    runner = make_peer("openvino", source, "float32", 1, 64)
    assert isinstance(runner, OpenVINOLatencyRunner) and runner.single_stream
    pipe = FakeLLMPipeline.instances[-1]
    assert pipe.path == "/models/m.Q4_1.gguf" and pipe.device == "CPU"
    assert pipe.properties["INFERENCE_NUM_THREADS"] >= 1
    out = capsys.readouterr().out
    assert "LLMPipeline" in out and "precision bf16" in out and "K/V cache u8" in out
    run = runner.generate_timed([[101, 102], [103]], [4, 2])
    assert [len(t) for t in run.token_times] == [4, 2]
    assert [(c[0], c[1]) for c in pipe.calls] == [([[101, 102]], "int64"), ([[103]], "int64")]
    for call, n in zip(pipe.calls, [4, 2]):
        _assert_greedy_exact(call[2], n)
        assert call[2].eos_token_id == 7  # the model's, so min_new_tokens masks the right one
    described = runner.describe()
    assert described["pipeline"] == "LLMPipeline" and described["inference_precision"] == "bf16"
    assert described["inputs"].startswith("token ids")


def test_batch_runner_on_stand_in(fake_openvino):
    runner = make_openvino_runner("/models/m.gguf", 2, BatchLimits(16, 512))
    assert isinstance(runner, OpenVINOBatchRunner) and not runner.single_stream
    pipe = FakeCBPipeline.instances[-1]
    assert pipe.properties == {"INFERENCE_NUM_THREADS": 2}
    assert (pipe.scheduler.max_num_seqs, pipe.scheduler.max_num_batched_tokens) == (16, 512)
    run = runner.generate_timed([[101, 102], [103], [104]], [3, 1, 2])
    assert run.token_times is None and run.elapsed_s >= 0
    inputs, configs = pipe.calls[-1]
    assert [t.array.tolist() for t in inputs] == [[[101, 102]], [[103]], [[104]]]
    for config, n in zip(configs, [3, 1, 2]):
        _assert_greedy_exact(config, n)
    assert runner.describe()["scheduler_config"] == "seqs 16 tokens 512"


def test_matched_runners_pass_and_record_the_properties(fake_openvino, capsys):
    matched = openvino_precision("matched", "float32", "auto", "int16")
    single = make_openvino_runner("/models/m.gguf", 1, None, matched)
    assert single.name == "openvino_genai_matched"
    assert FakeLLMPipeline.instances[-1].properties == {
        "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32",
        "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}  # fmt: skip
    batched = make_openvino_runner("/models/m.gguf", 2, BatchLimits(4, 64), matched)
    assert FakeCBPipeline.instances[-1].properties == {**matched.properties,
                                                       "INFERENCE_NUM_THREADS": 2}  # fmt: skip
    for runner in (single, batched):
        described = runner.describe()
        assert described["precision_mode"] == "matched"
        assert described["requested_properties"] == matched.properties
        assert described["matched_to"]["kv_cache_dtype"] == "auto"
        assert (described["inference_precision"], described["kv_cache_precision"],
                described["dynamic_quantization_group_size"]) == ("f32", "f32", 0)  # fmt: skip
        assert described["activations"] == "f32 (dynamic quantization off)"
    out = capsys.readouterr().out
    assert "openvino_genai_matched:" in out and "K/V cache f32" in out
    assert "matched to pagedllm's float32, --kv-cache-dtype auto" in out
    assert "KV_CACHE_PRECISION=f32 DYNAMIC_QUANTIZATION_GROUP_SIZE=0" in out


def _gguf_with_file_type(path, file_type: int) -> str:
    """A GGUF with metadata only (no tensors): enough for the file-type check."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_file_type(file_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.mark.parametrize("file_type, kv", [(0, "f16"), (1, "f16"), (3, "u8"), (15, "u8")])
def test_default_kv_follows_genai_gguf_reader(fake_openvino, tmp_path, file_type, kv):
    """GenAI asks for f16 K/V on F32 (0) and F16 (1) GGUFs, over the plugin's u8; a quantized
    file (Q4_1 3, Q4_K_M 15) keeps the plugin's default. `matched` overrides both."""
    path = _gguf_with_file_type(tmp_path / "m.gguf", file_type)
    described = make_openvino_runner(path, 1, None).describe()
    assert described["kv_cache_precision"] == kv
    assert ("GGUF reader" in described["precision_source"]) == (kv == "f16")
    matched = openvino_precision("matched", "float32", "auto", "int16")
    assert make_openvino_runner(path, 1, None, matched).describe()["kv_cache_precision"] == "f32"


def test_make_peers_runs_openvino_once_per_precision(fake_openvino, monkeypatch):
    monkeypatch.setattr(peers, "openvino_available", lambda: True)
    source = ModelSource("gguf", "/models", "m.Q4_1.gguf", "m")
    model = types.SimpleNamespace(dtype="float32", compute_dtype="float32", quantization="gguf",
                                  quantized_activation_dtype="int8")  # fmt: skip
    made = make_peers(["openvino"], source, model, 1, 64, BatchLimits(4, 64),
                      ["default", "matched", "matched"], "int8")  # fmt: skip
    assert [r.name for r in made] == ["openvino_genai", "openvino_genai_matched"]
    assert made[0].describe()["requested_properties"] == {}
    assert made[0].describe()["kv_cache_precision"] == "u8"  # the stand-in plugin's default
    assert made[1].describe()["requested_properties"] == {
        "INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "u8",
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}  # fmt: skip


def test_batch_runner_refuses_short_outputs(fake_openvino, monkeypatch):
    runner = make_openvino_runner("/models/m.gguf", 1, BatchLimits(4, 64))
    monkeypatch.setattr(
        FakeCBPipeline,
        "generate",
        lambda self, inputs, configs: [types.SimpleNamespace(m_generation_ids=[[5]])] * 2,
    )
    with pytest.raises(RuntimeError, match=r"generated \[1, 1\] tokens, not \[1, 3\]"):
        runner.generate_timed([[101], [102]], [1, 3])


@pytest.mark.gguf
@pytest.mark.timeout(300)
def test_openvino_pipelines_tiny_workload(smollm2_gguf_path):
    pytest.importorskip("openvino_genai")
    threads = envs.num_threads() or 1
    prompts, lens = [[1, 504, 3205, 282], [1, 2223, 314]], [4, 4]
    single = make_openvino_runner(smollm2_gguf_path, threads, None)
    run = single.generate_timed(prompts, lens)
    assert [len(t) for t in run.token_times] == lens
    assert all(t == sorted(t) and t[0] > 0 for t in run.token_times)
    described = single.describe()
    assert described["inference_num_threads"] == threads
    assert described["inference_precision"] in {"bf16", "f32", "f16"}
    del single
    batched = make_openvino_runner(smollm2_gguf_path, threads, BatchLimits(2, 64))
    assert batched.generate(prompts, lens) > 0  # raises unless each made exactly 4 tokens
