"""EngineCore: the inner loop. Each step: schedule -> execute on the workers -> update requests.

It runs in the caller's process for offline use and in its own process behind the server.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from pagedllm.config import EngineConfig
from pagedllm.core.sched.output import SchedulerOutput
from pagedllm.core.sched.scheduler import Scheduler
from pagedllm.engine.core_base import EngineCoreBase
from pagedllm.engine.messages import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest
from pagedllm.metrics.stats import SchedulerStats
from pagedllm.request import FinishReason, Request, RequestStatus
from pagedllm.structured_output.manager import StructuredOutputManager

if TYPE_CHECKING:
    from pagedllm.executor.abstract import StepFuture

_GRAMMAR_WAIT_SECONDS = 0.05
"""With nothing schedulable but requests whose grammar compiles, a step waits this long for
one of them instead of spinning."""


class EngineCore(EngineCoreBase):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        info = self.executor.kv_cache_info
        self.structured_output_manager = StructuredOutputManager(
            config.structured_outputs, config.model)
        self.scheduler = Scheduler(
            config.scheduler, config.cache, info.num_blocks, config.model.max_model_len,
            sliding_window=info.sliding_window,
            structured_output_manager=self.structured_output_manager,
            max_loras=None if config.lora is None else config.lora.max_loras,
            max_cpu_loras=None if config.lora is None else config.lora.cpu_capacity,
            num_state_slots=info.num_state_slots,
            num_cross_attention_tokens=info.num_cross_attention_tokens,
        )  # fmt: skip
        self.max_concurrent_batches = self.executor.max_concurrent_batches
        self.batch_queue: deque[tuple[SchedulerOutput, StepFuture]] = deque()
        """Pipeline parallelism: steps sent to the workers whose outputs are not read yet,
        oldest first (at most max_concurrent_batches)."""
        self.scheduler.pipeline_parallel = self.max_concurrent_batches > 1

    def add_request(self, request: EngineCoreRequest) -> None:
        params = request.sampling_params
        # NOTE: the input processor checked the prompt leaves room for one token.
        remaining = self.config.model.max_model_len - len(request.prompt_token_ids)
        max_tokens = remaining if params.max_tokens is None else min(params.max_tokens, remaining)
        core_request = Request(
            request.request_id,
            request.prompt_token_ids,
            params,
            max_tokens=max_tokens,
            eos_token_ids=self.config.model.eos_token_ids,
            arrival_time=request.arrival_time,
            priority=request.priority,
            block_hasher=self.scheduler.block_hasher,
            lora_request=request.lora_request,
            cache_salt=request.cache_salt,
            mm_features=request.mm_features,
            encoder_prompt_token_ids=request.encoder_prompt_token_ids,
        )
        core_request.tenant = request.tenant
        core_request.tenant_weight = request.tenant_weight
        self.scheduler.add_request(core_request)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def finish_requests_stopped(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_STOPPED)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or bool(self.batch_queue)

    def make_stats(self) -> SchedulerStats:
        return self.scheduler.make_stats()

    def reset_prefix_cache(self) -> bool:
        return self.scheduler.reset_prefix_cache()

    def remove_lora(self, lora_id: int) -> bool:
        """Unload an adapter (vLLM's name): the workers free its CPU copy and slot, now or when
        its last request ends. False when the workers do not hold it."""
        removed = self.scheduler.remove_lora(lora_id)
        if removed and not self.scheduler.has_unfinished_requests():
            # NOTE: idle, no step would carry the drop to the workers until the next request
            self.step()
        return removed

    def step(self) -> EngineCoreOutputs:
        if self.max_concurrent_batches > 1:
            return self.step_with_batch_queue()
        profiler = self.step_profiler
        with profiler.step():
            with profiler.phase("schedule"):
                scheduler_output = self.scheduler.schedule()
                if scheduler_output.is_empty:
                    self.structured_output_manager.wait_for_grammars(
                        self.scheduler.waiting_for_grammar(), _GRAMMAR_WAIT_SECONDS)
            start = time.perf_counter()
            runner_output = self.executor.execute_model(scheduler_output)
            self.last_execute_seconds = time.perf_counter() - start
            with profiler.phase("update"):
                outputs = self.scheduler.update_from_output(scheduler_output, runner_output)
            if runner_output.pooler_output:
                self._finish_pooled(runner_output.pooler_output, outputs)
        return outputs

    def step_with_batch_queue(self) -> EngineCoreOutputs:
        """Pipeline parallelism (vLLM's step_with_batch_queue): while fewer than
        max_concurrent_batches steps are in flight and the scheduler finds work (requests not
        in flight), send a new step and return at once (empty outputs); otherwise wait for the
        oldest step and update the requests from it. Stage 0 thus starts step i + 1 while
        stage 1 runs step i."""
        queue = self.batch_queue
        if len(queue) < self.max_concurrent_batches:
            scheduler_output = self.scheduler.schedule()
            if not scheduler_output.is_empty or not queue:
                if scheduler_output.is_empty:
                    self.structured_output_manager.wait_for_grammars(
                        self.scheduler.waiting_for_grammar(), _GRAMMAR_WAIT_SECONDS)
                queue.append((scheduler_output,
                              self.executor.execute_model_async(scheduler_output)))
                if not scheduler_output.is_empty and len(queue) < self.max_concurrent_batches:
                    return EngineCoreOutputs()
            else:
                # nothing new while steps run: the finished ids go with the next step sent
                self.scheduler.finished_req_ids |= scheduler_output.finished_req_ids
        scheduler_output, future = queue.popleft()
        start = time.perf_counter()
        runner_output = future.result()
        self.last_execute_seconds = time.perf_counter() - start
        return self.scheduler.update_from_output(scheduler_output, runner_output)

    def shutdown(self) -> None:
        self.structured_output_manager.shutdown()
        super().shutdown()

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
            ))  # fmt: skip
        self.scheduler.finish_requests(done, RequestStatus.FINISHED_STOPPED)
