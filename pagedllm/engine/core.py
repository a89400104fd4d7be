"""EngineCore: the inner loop. Each step: schedule -> execute on the model -> update requests.

It runs in the caller's process for offline use and in its own process behind the server.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pagedllm.attention.selector import get_attn_backend
from pagedllm.config import EngineConfig
from pagedllm.core.kv_cache_manager import common_sliding_window
from pagedllm.core.sched.scheduler import Scheduler
from pagedllm.engine.messages import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest
from pagedllm.logger import init_logger
from pagedllm.metrics.step_profile import profiler_from_env
from pagedllm.model_executor.layers.attention import attention_layers
from pagedllm.model_executor.model_loader.gguf import release_gguf_readers
from pagedllm.request import FinishReason, Request, RequestStatus
from pagedllm.utils.memory import format_bytes
from pagedllm.worker.kv_cache_alloc import allocate_kv_caches, plan_kv_cache
from pagedllm.worker.model_runner import ModelRunner
from pagedllm.worker.model_setup import load_model_on_device

if TYPE_CHECKING:
    from pagedllm.engine.pooling_core import PoolingEngineCore

logger = init_logger(__name__)


class EngineCore:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        device, model = load_model_on_device(config)
        # The model is loaded (and, in-process, the tokenizer built before it): unmap the GGUF
        # file before the KV cache is allocated, so the two never add up in the peak.
        release_gguf_readers()
        backend = get_attn_backend(config.device.attention_backend, device.type)
        layout = plan_kv_cache(config.model, config.cache, device)
        kv_caches = allocate_kv_caches(
            layout, config.model, config.cache, backend, device, len(attention_layers(model))
        )
        logger.info(
            "KV cache: %d blocks x %d tokens = %d tokens, %s (%s backend, prefix caching %s)",
            layout.num_blocks, layout.block_size, layout.num_tokens,
            format_bytes(layout.total_bytes), backend.name,
            "on" if config.cache.enable_prefix_caching else "off",
        )
        self.num_blocks = layout.num_blocks
        self.kv_cache_bytes = layout.total_bytes
        self.model_runner = ModelRunner(
            model, kv_caches, backend, layout.block_size, config.model.vocab_size,
            config.model.eos_token_ids, device,
            pool_last_token=config.model.task == "embed",
            enforce_eager=config.model.enforce_eager,
        )
        self.scheduler = Scheduler(
            config.scheduler, config.cache, layout.num_blocks, config.model.max_model_len,
            sliding_window=common_sliding_window(
                layer.sliding_window for layer in attention_layers(model)
            ),
        )
        self.step_profiler = profiler_from_env()
        """Per-phase step timing (off unless PAGEDLLM_STEP_PROFILE or enabled by the caller)."""

    def add_request(self, request: EngineCoreRequest) -> None:
        params = request.sampling_params
        max_len = self.config.model.max_model_len
        remaining = max_len - len(request.prompt_token_ids)
        max_tokens = remaining if params.max_tokens is None else min(params.max_tokens, remaining)
        self.scheduler.add_request(
            Request(
                request.request_id,
                request.prompt_token_ids,
                params,
                max_tokens=max_tokens,
                eos_token_ids=self.config.model.eos_token_ids,
                arrival_time=request.arrival_time,
                priority=request.priority,
                block_hasher=self.scheduler.block_hasher,
            )
        )

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def finish_requests_stopped(self, request_ids: list[str]) -> None:
        """Requests the output processor ended on a stop string."""
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_STOPPED)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> EngineCoreOutputs:
        profiler = self.step_profiler
        with profiler.step():
            with profiler.phase("schedule"):
                scheduler_output = self.scheduler.schedule()
            start = time.perf_counter()
            runner_output = self.model_runner.execute_model(scheduler_output)
            self.last_execute_seconds = time.perf_counter() - start
            with profiler.phase("update"):
                outputs = self.scheduler.update_from_output(scheduler_output, runner_output)
            if runner_output.pooler_output:
                self._finish_pooled(runner_output.pooler_output, outputs)
        return outputs

    def _finish_pooled(self, pooled: dict[str, list[float]], outputs: EngineCoreOutputs) -> None:
        """Task "embed": a request is done once its prompt is computed; it reports the pooled
        state instead of a token."""
        done = []
        for req_id, vector in pooled.items():
            request = self.scheduler.get_request(req_id)
            if request is None or request.is_finished():
                continue  # aborted while the step ran
            done.append(req_id)
            outputs.outputs.append(EngineCoreOutput(
                req_id, [], finish_reason=FinishReason.STOP,
                num_cached_tokens=request.num_cached_tokens or 0, pooling_output=vector,
            ))
        self.scheduler.finish_requests(done, RequestStatus.FINISHED_STOPPED)


def make_engine_core(config: EngineConfig) -> EngineCore | PoolingEngineCore:
    """The engine core for the model: the paged one, or the KV-cache-free one of encoders."""
    if config.model.is_encoder_only:
        from pagedllm.engine.pooling_core import PoolingEngineCore

        return PoolingEngineCore(config)
    return EngineCore(config)
