"""OpenVINO GenAI as a benchmark peer (`--peers openvino`; `pip install pagedllm[openvino]`).

It loads the GGUF pagedllm runs directly and takes our token ids as they are (an ov.Tensor of
int64 ids; no text round trip), so the workload is identical:

    bench latency     LLMPipeline, one request at a time; a streamer stamps each token
    bench throughput  ContinuousBatchingPipeline (paged attention, continuous batching) with every
                      request at once and our engine's scheduler limits (max_num_seqs,
                      max_num_batched_tokens)

Greedy, exactly output_len new tokens (min_new_tokens = max_new_tokens, ignore_eos). It runs on
the CPU with INFERENCE_NUM_THREADS = our thread count. The pipelines do not expose their compiled
model, so the precision recorded is the CPU plugin's default on this machine (bf16 on CPUs with
AVX512_BF16/AMX, f32 elsewhere; K/V cache u8), which is what they run since nothing overrides it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pagedllm.benchmarks.peer_runner import BatchLimits, PeerRunner
from pagedllm.benchmarks.timing import TimedRun, TokenClock, check_lengths

DEVICE = "CPU"
NAME = "openvino_genai"


def cpu_defaults() -> dict[str, Any]:
    """The CPU plugin's default precisions on this machine (what the pipelines run with)."""
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


class OpenVINOBase(PeerRunner):
    name = NAME

    def __init__(self, gguf_path: str, threads: int, pipeline: str) -> None:
        import openvino_genai

        self.path, self.threads, self.pipeline = gguf_path, threads, pipeline
        self.defaults = cpu_defaults()
        self.version = openvino_genai.get_version()

    def describe(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "device": DEVICE,
            "gguf": self.path,
            "inputs": "token ids (ov.Tensor int64)",
            "inference_num_threads": self.threads,
            "openvino_genai": self.version,
            **self.defaults,
        }

    def summary(self) -> str:
        d = self.defaults
        return (
            f"OpenVINO GenAI {self.version} runs {os.path.basename(self.path)} with "
            f"{self.pipeline} on {DEVICE}, {self.threads} threads, token-id inputs; inference "
            f"precision {d['inference_precision']}, K/V cache {d['kv_cache_precision']} (the CPU "
            "plugin's defaults here)"
        )


class OpenVINOLatencyRunner(OpenVINOBase):
    """LLMPipeline, one request after the other, each token stamped by a streamer."""

    single_stream = True

    def __init__(self, gguf_path: str, threads: int) -> None:
        import openvino_genai

        super().__init__(gguf_path, threads, "LLMPipeline")
        self.pipe = openvino_genai.LLMPipeline(gguf_path, DEVICE, INFERENCE_NUM_THREADS=threads)
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

    def __init__(self, gguf_path: str, threads: int, limits: BatchLimits) -> None:
        import openvino_genai

        super().__init__(gguf_path, threads, "ContinuousBatchingPipeline")
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.max_num_seqs = limits.max_num_seqs
        scheduler.max_num_batched_tokens = limits.max_num_batched_tokens
        # cache_size 0: the KV cache grows as the requests need it.
        self.scheduler = scheduler.to_string()
        self.pipe = openvino_genai.ContinuousBatchingPipeline(
            gguf_path, scheduler, DEVICE, {"INFERENCE_NUM_THREADS": threads}
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
    gguf_path: str, threads: int, batch_limits: BatchLimits | None
) -> OpenVINOBase:
    """The single-stream runner (batch_limits None: bench latency) or the batched one."""
    runner: OpenVINOBase = (
        OpenVINOLatencyRunner(gguf_path, threads)
        if batch_limits is None
        else OpenVINOBatchRunner(gguf_path, threads, batch_limits)
    )
    print(runner.summary(), flush=True)
    return runner
