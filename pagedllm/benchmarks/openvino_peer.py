"""OpenVINO GenAI as a benchmark peer (`--peers openvino`; `pip install pagedllm[openvino]`).

It loads the GGUF pagedllm runs directly and takes our token ids as they are (an ov.Tensor of
int64 ids; no text round trip), so the workload is identical:

    bench latency     LLMPipeline, one request at a time; a streamer stamps each token
    bench throughput  ContinuousBatchingPipeline (paged attention, continuous batching) with every
                      request at once and our engine's scheduler limits (max_num_seqs,
                      max_num_batched_tokens)

Greedy, exactly output_len new tokens (min_new_tokens = max_new_tokens, ignore_eos). It runs on
the CPU with INFERENCE_NUM_THREADS = our thread count, at one of two precisions
(--openvino-precision, both may run side by side):

    default  the CPU plugin's defaults, which nothing overrides: inference bf16 on CPUs with
             AVX512_BF16/AMX (f32 elsewhere), K/V cache u8 (f16 for an F32/F16 GGUF, which
             GenAI's GGUF reader asks for: GGUF_HALF_KV_FILE_TYPES), dynamic quantization of the
             FullyConnected activations to int8 in groups of 32 (effective only where the plugin
             has an int8 path for it: AVX-VNNI or AVX512-VNNI with f32 inference)
    matched  plugin properties that set pagedllm's own precision (matched_properties): inference
             in our compute dtype, K/V cache in our --kv-cache-dtype, dynamic quantization off
             for our int16 activations (on, groups of 32, for --quantized-activation-dtype int8)

The pipelines hand the properties to the plugin when they compile the model (with
OPENVINO_LOG_LEVEL=3 GenAI prints the compiled model's, which show them); they do not expose the
compiled model, so the record states what was requested, or for `default` the plugin's defaults.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from pagedllm.benchmarks.peer_runner import BatchLimits, PeerRunner
from pagedllm.benchmarks.timing import TimedRun, TokenClock, check_lengths

DEVICE = "CPU"
NAME = "openvino_genai"
PRECISION_MODES = ("default", "matched")
"""--openvino-precision: the plugin's defaults, or pagedllm's precision (matched_properties)."""

OV_FLOAT_TYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
"""pagedllm's float dtypes as OpenVINO element types."""
OV_KV_TYPES = {"fp16": "f16", "int8": "u8"}
"""--kv-cache-dtype (besides auto, the compute dtype) as the CPU plugin's KV_CACHE_PRECISION,
which takes f32, bf16, f16 or u8 only: fp8 has none. int8 -> u8 is a match in width, not in
scheme (ours: int8 with one scale per token and head; the plugin's: u8 with a scale and a zero
point)."""
DYNAMIC_QUANTIZATION_GROUP = {"int16": 0, "int8": 32}
"""--quantized-activation-dtype as DYNAMIC_QUANTIZATION_GROUP_SIZE: int16 has no int8 rounding
(0: off); int8 rounds each block of 32 activations to int8, as the plugin's default group does."""


def kv_cache_precision(kv_cache_dtype: str, compute_dtype: str) -> str:
    """pagedllm's --kv-cache-dtype as KV_CACHE_PRECISION ("auto": the compute dtype's type).
    Raises ValueError for one the plugin has no equivalent of (fp8)."""
    if kv_cache_dtype == "auto":
        return OV_FLOAT_TYPES[compute_dtype]
    if kv_cache_dtype in OV_KV_TYPES:
        return OV_KV_TYPES[kv_cache_dtype]
    raise ValueError(
        f"--openvino-precision matched: --kv-cache-dtype {kv_cache_dtype} has no OpenVINO "
        "equivalent (its CPU plugin keeps K/V in f32, bf16, f16 or u8); use --kv-cache-dtype "
        "auto, fp16 or int8, or --openvino-precision default"
    )


def matched_properties(
    compute_dtype: str, kv_cache_dtype: str, quantized_activation_dtype: str
) -> dict[str, Any]:
    """The CPU plugin properties that run OpenVINO at pagedllm's precision: the engine's compute
    dtype, its --kv-cache-dtype and its --quantized-activation-dtype (ValueError: see
    kv_cache_precision)."""
    return {
        "INFERENCE_PRECISION_HINT": OV_FLOAT_TYPES[compute_dtype],
        "KV_CACHE_PRECISION": kv_cache_precision(kv_cache_dtype, compute_dtype),
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": DYNAMIC_QUANTIZATION_GROUP[quantized_activation_dtype],
    }


@dataclass(frozen=True)
class OpenVINOPrecision:
    """Which precision an OpenVINO runner runs at and the plugin properties that ask for it."""

    mode: str = "default"
    properties: dict[str, Any] = field(default_factory=dict)
    """Passed to the pipeline with INFERENCE_NUM_THREADS; empty for `default`."""
    matched_to: dict[str, str] = field(default_factory=dict)
    """The pagedllm settings `matched` mirrors (empty for `default`)."""

    @property
    def runner_name(self) -> str:
        """openvino_genai for the defaults (the name older results carry), else with the mode."""
        return NAME if self.mode == "default" else f"{NAME}_{self.mode}"


def openvino_precision(
    mode: str, compute_dtype: str, kv_cache_dtype: str, quantized_activation_dtype: str
) -> OpenVINOPrecision:
    """The precision of one --openvino-precision mode for an engine running these settings."""
    if mode == "default":
        return OpenVINOPrecision()
    if mode != "matched":
        raise ValueError(f"--openvino-precision must be one of {PRECISION_MODES}, got {mode!r}")
    properties = matched_properties(compute_dtype, kv_cache_dtype, quantized_activation_dtype)
    return OpenVINOPrecision(mode, properties, {
        "compute_dtype": compute_dtype,
        "kv_cache_dtype": kv_cache_dtype,
        "quantized_activation_dtype": quantized_activation_dtype,
    })  # fmt: skip


GGUF_HALF_KV_FILE_TYPES = {0: "F32", 1: "F16"}
"""GGUF general.file_type values for which OpenVINO GenAI's GGUF reader asks for an f16 K/V cache
(KV_CACHE_PRECISION in the model's runtime options), which the plugin takes over its own default
unless the property is passed (openvino-genai 2026.4.1 with OPENVINO_LOG_LEVEL=3 prints the
compiled model's: f16 for random-llama-1b-F16.gguf, u8 for SmolLM2's Q4_1)."""


def cpu_defaults() -> dict[str, Any]:
    """The CPU plugin's default precisions on this machine."""
    import openvino as ov

    core = ov.Core()

    def prop(key: str) -> Any:
        value = core.get_property(DEVICE, key)
        return value.get_type_name() if hasattr(value, "get_type_name") else value

    return {
        "inference_precision": prop("INFERENCE_PRECISION_HINT"),
        "kv_cache_precision": prop("KV_CACHE_PRECISION"),
        "dynamic_quantization_group_size": prop("DYNAMIC_QUANTIZATION_GROUP_SIZE"),
        "precision_source": "the CPU plugin's defaults (ov.Core().get_property); the pipelines "
        "do not expose their compiled model and nothing here overrides them",
    }


def default_precisions(gguf_path: str) -> dict[str, Any]:
    """What the pipelines run `gguf_path` at when no property is passed: the plugin's defaults,
    with an f16 K/V cache where GenAI's GGUF reader asks for one (GGUF_HALF_KV_FILE_TYPES)."""
    values = cpu_defaults()
    file_type = _gguf_file_type(gguf_path)
    if file_type in GGUF_HALF_KV_FILE_TYPES:
        values["kv_cache_precision"] = "f16"
        values["precision_source"] += (
            f"; K/V f16: OpenVINO GenAI's GGUF reader asks for it on an "
            f"{GGUF_HALF_KV_FILE_TYPES[file_type]} GGUF (the model's runtime options)"
        )
    return values


def _gguf_file_type(path: str) -> int | None:
    """general.file_type of the GGUF at `path` (None: unreadable or not recorded)."""
    from pagedllm.model_executor.model_loader.gguf_file import GGUFFile

    try:
        file_type = GGUFFile(path).fields.get("general.file_type")
    except (OSError, ValueError):
        return None
    return file_type if isinstance(file_type, int) else None


def greedy_config(output_len: int, eos_token_id: int) -> Any:
    """Greedy, exactly output_len new tokens whatever the model samples."""
    import openvino_genai

    return openvino_genai.GenerationConfig(
        max_new_tokens=output_len,
        min_new_tokens=output_len,
        ignore_eos=True,
        do_sample=False,
        eos_token_id=eos_token_id,
    )


def token_tensor(prompt: list[int]) -> Any:
    """One prompt as OpenVINO's input_ids: int64 [1, prompt_len]."""
    import numpy as np
    import openvino as ov

    return ov.Tensor(np.array([prompt], dtype=np.int64))


def _cpu_has_vnni() -> bool | None:
    """AVX-VNNI or AVX512-VNNI in Linux's CPU flags (None: no x86 flags line to read)."""
    from pagedllm.kernels import cpu_flags

    flags = cpu_flags()
    return bool({"avx_vnni", "avx512_vnni"} & flags) if flags else None


def activation_precision(group_size: int, inference_precision: str, vnni: bool | None) -> str:
    """What the FullyConnected layers compute their activations in. The x86 plugin quantizes them
    to int8 (dynamic quantization) only with AVX-VNNI or AVX512-VNNI: without it a nonzero group
    size changes nothing (checked on a Zen 3: bitwise the same log-probs with group 0 and 32)."""
    if group_size == 0:
        return f"{inference_precision} (dynamic quantization off)"
    if vnni is False:
        return (f"{inference_precision}: dynamic quantization (group {group_size}) is set but "
                "not applied, the plugin's int8 path needs AVX-VNNI or AVX512-VNNI")
    where = "" if vnni else ", where the plugin has an int8 path (AVX-VNNI / AVX512-VNNI)"
    return f"int8 in groups of {group_size} (dynamic quantization{where})"


class OpenVINOBase(PeerRunner):
    def __init__(
        self, gguf_path: str, threads: int, pipeline: str, precision: OpenVINOPrecision
    ) -> None:
        import openvino_genai

        self.path, self.threads, self.pipeline = gguf_path, threads, pipeline
        self.precision = precision
        self.name = precision.runner_name
        self.properties = {"INFERENCE_NUM_THREADS": threads, **precision.properties}
        """Everything the pipeline is given for the plugin."""
        self.version = openvino_genai.get_version()
        self.precisions = self._precisions()

    def _precisions(self) -> dict[str, Any]:
        """The precisions it runs: the requested ones, or (nothing requested) the defaults."""
        requested = self.precision.properties
        if not requested:
            values = default_precisions(self.path)
        else:
            values = {
                "inference_precision": requested["INFERENCE_PRECISION_HINT"],
                "kv_cache_precision": requested["KV_CACHE_PRECISION"],
                "dynamic_quantization_group_size": requested["DYNAMIC_QUANTIZATION_GROUP_SIZE"],
                "precision_source": "requested through the pipeline's plugin properties, "
                "matched to pagedllm's (see matched_to)",
            }
        values["activations"] = activation_precision(
            values["dynamic_quantization_group_size"], values["inference_precision"],
            _cpu_has_vnni(),
        )  # fmt: skip
        return values

    def describe(self) -> dict[str, Any]:
        matched = {"matched_to": self.precision.matched_to} if self.precision.matched_to else {}
        return {
            "pipeline": self.pipeline,
            "device": DEVICE,
            "gguf": self.path,
            "inputs": "token ids (ov.Tensor int64)",
            "inference_num_threads": self.threads,
            "openvino_genai": self.version,
            "precision_mode": self.precision.mode,
            "requested_properties": dict(self.precision.properties),
            **matched,
            **self.precisions,
        }

    def summary(self) -> str:
        d = self.precisions
        if self.precision.matched_to:
            m = self.precision.matched_to
            whose = (f"matched to pagedllm's {m['compute_dtype']}, --kv-cache-dtype "
                     f"{m['kv_cache_dtype']}, --quantized-activation-dtype "
                     f"{m['quantized_activation_dtype']}: "
                     + " ".join(f"{k}={v}" for k, v in self.precision.properties.items()))
        else:
            whose = "the CPU plugin's defaults here"
        return (
            f"{self.name}: OpenVINO GenAI {self.version} runs {os.path.basename(self.path)} with "
            f"{self.pipeline} on {DEVICE}, {self.threads} threads, token-id inputs; inference "
            f"precision {d['inference_precision']}, K/V cache {d['kv_cache_precision']}, "
            f"activations {d['activations']} ({whose})"
        )


class OpenVINOLatencyRunner(OpenVINOBase):
    """LLMPipeline, one request after the other, each token stamped by a streamer."""

    single_stream = True

    def __init__(
        self, gguf_path: str, threads: int, precision: OpenVINOPrecision | None = None
    ) -> None:
        import openvino_genai

        super().__init__(gguf_path, threads, "LLMPipeline", precision or OpenVINOPrecision())
        self.pipe = openvino_genai.LLMPipeline(gguf_path, DEVICE, **self.properties)
        self.eos_token_id = self.pipe.get_generation_config().eos_token_id
        self.streamer_class = _streamer_class()

    def generate_timed(self, prompts: list[list[int]], output_lens: list[int]) -> TimedRun:
        clock = TokenClock(len(prompts))
        for row, (prompt, output_len) in enumerate(zip(prompts, output_lens)):
            config = greedy_config(output_len, self.eos_token_id)
            self.pipe.generate(token_tensor(prompt), config, self.streamer_class(clock, row))
        run = clock.finish()
        check_lengths(self.name, run, output_lens)
        return run


class OpenVINOBatchRunner(OpenVINOBase):
    """ContinuousBatchingPipeline.generate over every request at once (bench throughput); no
    per-token times (its streamer serves one request only)."""

    def __init__(
        self, gguf_path: str, threads: int, limits: BatchLimits,
        precision: OpenVINOPrecision | None = None,
    ) -> None:
        import openvino_genai

        super().__init__(gguf_path, threads, "ContinuousBatchingPipeline",
                         precision or OpenVINOPrecision())  # fmt: skip
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.max_num_seqs = limits.max_num_seqs
        scheduler.max_num_batched_tokens = limits.max_num_batched_tokens
        # cache_size 0: the KV cache grows as the requests need it.
        self.scheduler = scheduler.to_string()
        self.pipe = openvino_genai.ContinuousBatchingPipeline(
            gguf_path, scheduler, DEVICE, self.properties
        )
        self.eos_token_id = self.pipe.get_config().eos_token_id

    def generate_timed(self, prompts: list[list[int]], output_lens: list[int]) -> TimedRun:
        inputs = [token_tensor(p) for p in prompts]
        configs = [greedy_config(n, self.eos_token_id) for n in output_lens]
        start = time.perf_counter()
        results = self.pipe.generate(inputs, configs)
        elapsed = time.perf_counter() - start
        made = [len(r.m_generation_ids[0]) for r in results]
        if made != list(output_lens):
            raise RuntimeError(f"{self.name} generated {made} tokens, not {list(output_lens)}")
        return TimedRun(elapsed)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scheduler_config": self.scheduler}


def _streamer_class() -> type:
    """A StreamerBase (OpenVINO calls write with each new token's ids) that stamps one request's
    tokens on a TokenClock."""
    import openvino_genai

    class TokenStamps(openvino_genai.StreamerBase):
        def __init__(self, clock: TokenClock, row: int) -> None:
            super().__init__()
            self.clock, self.row = clock, row

        def write(self, token: int | list[int]) -> Any:
            self.clock.mark(self.row, len(token) if isinstance(token, list) else 1)
            return openvino_genai.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    return TokenStamps


def make_openvino_runner(
    gguf_path: str, threads: int, batch_limits: BatchLimits | None,
    precision: OpenVINOPrecision | None = None,
) -> OpenVINOBase:
    """The single-stream runner (batch_limits None: bench latency) or the batched one, at the
    plugin's default precision unless `precision` says otherwise."""
    runner: OpenVINOBase = (
        OpenVINOLatencyRunner(gguf_path, threads, precision)
        if batch_limits is None
        else OpenVINOBatchRunner(gguf_path, threads, batch_limits, precision)
    )
    print(runner.summary(), flush=True)
    return runner
