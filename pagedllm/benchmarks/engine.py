"""Our side of a benchmark: the offline `LLM` built from the engine flags, run like a peer."""

from __future__ import annotations

import argparse
import itertools
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pagedllm.benchmarks.timing import TimedRun, TokenClock, check_lengths

if TYPE_CHECKING:
    from pagedllm.metrics.step_profile import StepProfiler
    from pagedllm.model_executor.model_loader.resolve import ModelSource


class EngineRunner:
    """`LLM.generate` on token-id prompts, greedy, with ignore_eos so each request makes exactly
    its output_len tokens (checked)."""

    name = "pagedllm"

    def __init__(self, args: argparse.Namespace) -> None:
        from pagedllm import LLM
        from pagedllm.entrypoints.cli.engine_flags import engine_args_from

        self.llm = LLM(**asdict(engine_args_from(args)))
        self.config = self.llm.llm_engine.config
        self._request_ids = itertools.count()

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    @property
    def profiler(self) -> StepProfiler:
        return self.llm.llm_engine.step_profiler

    @property
    def max_model_len(self) -> int:
        return self.config.model.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.config.scheduler.max_num_seqs

    def source(self) -> ModelSource:
        """The checkpoint the engine loaded, for the peers to load the same one."""
        from pagedllm.model_executor.model_loader.resolve import ModelSource

        model = self.config.model
        if model.format == "gguf":
            return ModelSource(
                "gguf",
                os.path.dirname(model.path),
                os.path.basename(model.path),
                model.model or model.path,
            )
        return ModelSource("hf", model.path, None, model.model or model.path)

    def describe(self) -> dict[str, Any]:
        model = self.config.model
        return {
            "model": model.model or model.path,
            "path": model.path,
            "dtype": model.dtype,
            "quantization": model.quantization,
            "kv_cache_dtype": self.config.cache.kv_cache_dtype,
            "max_num_seqs": self.max_num_seqs,
            "max_model_len": self.max_model_len,
        }

    def generate(self, prompts: list[list[int]], output_lens: list[int]) -> float:
        from pagedllm import SamplingParams

        params = [
            SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in output_lens
        ]
        start = time.perf_counter()
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False
        )
        elapsed = time.perf_counter() - start
        made = [len(o.outputs[0].token_ids) for o in outputs]
        if made != list(output_lens):
            raise RuntimeError(f"pagedllm generated {made} tokens, not {list(output_lens)}")
        return elapsed

    def generate_timed(self, prompts: list[list[int]], output_lens: list[int]) -> TimedRun:
        """generate, stepping the engine here so each token is stamped as its step returns it
        (streamed outputs, as a server client sees them, instead of LLM.generate's final ones)."""
        from pagedllm import SamplingParams
        from pagedllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        ids = [f"bench-{next(self._request_ids)}" for _ in prompts]
        rows = {request_id: row for row, request_id in enumerate(ids)}
        clock = TokenClock(len(prompts))
        try:
            for request_id, prompt, n in zip(ids, prompts, output_lens):
                params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,
                                        output_kind=RequestOutputKind.DELTA)
                engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
        except Exception:
            engine.abort_request(ids)  # none of the batch stays queued
            raise
        while engine.has_unfinished_requests():
            for output in engine.step():
                clock.mark(rows[output.request_id], len(output.outputs[0].token_ids))
        run = clock.finish()
        check_lengths(self.name, run, output_lens)
        return run
