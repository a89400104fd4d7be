"""PoolingEngineCore: the engine core of encoder-only models (BERT embeddings, classifiers).

Design choice: vLLM runs pooling requests through its scheduler (prefill only). Encoders need
neither a KV cache (attention is bidirectional over the whole prompt, nothing is reused between
steps) nor chunking, so they get this lean core instead: the same interface (EngineCoreBase),
executor and Worker as EngineCore, a PoolingScheduler that batches whole prompts under the token
budget, and a PoolingRunner that embeds each batch in one forward pass. No KV block is allocated.

Decoder models served with task "embed" stay on EngineCore (paged KV cache, chunked prefill,
prefix caching): a request finishes when its prompt is computed, with the last token's state.
"""

from __future__ import annotations

import time

from pagedllm.config import EngineConfig
from pagedllm.core.sched.pooling_scheduler import PoolingScheduler
from pagedllm.engine.core_base import EngineCoreBase
from pagedllm.engine.messages import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest
from pagedllm.logger import init_logger
from pagedllm.metrics.stats import SchedulerStats
from pagedllm.request import FinishReason

logger = init_logger(__name__)


class PoolingEngineCore(EngineCoreBase):
    def __init__(self, config: EngineConfig) -> None:
        assert config.model.is_encoder_only, "PoolingEngineCore runs encoder-only models"
        super().__init__(config)
        self.scheduler = PoolingScheduler(config.scheduler)
        logger.info("encoder-only model: no KV cache; batches of up to %d prompts / %d tokens",
                    config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens)

    def add_request(self, request: EngineCoreRequest) -> None:
        # NOTE: the input processor already refused generation requests and long prompts.
        assert request.pooling_params is not None, "an encoder serves embedding requests only"
        self.scheduler.add_request(request.request_id, request.prompt_token_ids,
                                   request.token_type_ids, request.mm_features)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids)

    def finish_requests_stopped(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def make_stats(self) -> SchedulerStats:
        return self.scheduler.make_stats()

    def reset_prefix_cache(self) -> bool:
        return self.scheduler.reset_prefix_cache()

    def step(self) -> EngineCoreOutputs:
        batch = self.scheduler.schedule()
        if not batch.prompts:
            return EngineCoreOutputs(scheduler_stats=self.scheduler.make_stats())
        start = time.perf_counter()
        pooled = self.executor.execute_model(batch).pooler_output
        self.last_execute_seconds = time.perf_counter() - start
        outputs = [
            EngineCoreOutput(req_id, [], finish_reason=FinishReason.STOP,
                             pooling_output=pooled[req_id])
            for req_id in batch.prompts
        ]
        stats = self.scheduler.make_stats(len(batch.prompts), batch.total_num_scheduled_tokens)
        return EngineCoreOutputs(outputs=outputs, scheduler_stats=stats)
