"""PoolingScheduler: first-come-first-served batches of whole prompts for encoder-only models.

Encoders attend bidirectionally over the whole prompt, so a prompt is never chunked and nothing
is cached between steps: no KV blocks, no preemption. A step takes waiting prompts in arrival
order while they fit max_num_seqs and max_num_batched_tokens (a prompt longer than the budget
alone still runs, by itself).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from pagedllm.config.scheduler import SchedulerConfig
from pagedllm.core.sched.output import PoolingSchedulerOutput
from pagedllm.metrics.stats import SchedulerStats
from pagedllm.multimodal.inputs import MultiModalFeature


class PoolingScheduler:
    def __init__(self, scheduler_config: SchedulerConfig) -> None:
        self.config = scheduler_config
        self.waiting: OrderedDict[str, list[int]] = OrderedDict()
        """req_id -> prompt token ids, in arrival order."""
        self.token_type_ids: dict[str, list[int]] = {}
        """req_id -> segment ids, for the waiting prompts that have them."""
        self.mm_features: dict[str, list[MultiModalFeature]] = {}
        """req_id -> its image, for a dual encoder's waiting image prompts."""

    def add_request(self, req_id: str, prompt_token_ids: list[int],
                    token_type_ids: list[int] | None = None,
                    mm_features: list[MultiModalFeature] | None = None) -> None:
        assert req_id not in self.waiting, f"duplicate {req_id!r}"
        self.waiting[req_id] = prompt_token_ids
        if token_type_ids is not None:
            self.token_type_ids[req_id] = token_type_ids
        if mm_features:
            self.mm_features[req_id] = mm_features

    def finish_requests(self, req_ids: Iterable[str]) -> None:
        for req_id in req_ids:
            self.waiting.pop(req_id, None)
            self.token_type_ids.pop(req_id, None)
            self.mm_features.pop(req_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def schedule(self) -> PoolingSchedulerOutput:
        """The next batch, removed from the queue."""
        batch: dict[str, list[int]] = {}
        budget = self.config.max_num_batched_tokens
        while self.waiting and len(batch) < self.config.max_num_seqs:
            req_id, prompt = next(iter(self.waiting.items()))
            if batch and len(prompt) > budget:
                break
            batch[req_id] = self.waiting.pop(req_id)
            budget -= len(prompt)
        token_types = {r: self.token_type_ids.pop(r) for r in batch if r in self.token_type_ids}
        images = {r: self.mm_features.pop(r) for r in batch if r in self.mm_features}
        return PoolingSchedulerOutput(batch, token_types, images)

    def make_stats(self, num_running: int = 0, num_prompt_tokens: int = 0) -> SchedulerStats:
        return SchedulerStats(num_running_reqs=num_running, num_waiting_reqs=len(self.waiting),
                              num_prompt_tokens=num_prompt_tokens)

    def reset_prefix_cache(self) -> bool:
        return True  # nothing is cached
