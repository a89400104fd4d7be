"""StepBuilder: what one schedule() call has decided so far, and the token budget left."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedllm.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from pagedllm.request import Request


@dataclass
class StepBuilder:
    """Accumulates one step's scheduling decisions, in scheduling order.

    token_budget: tokens still schedulable this step (starts at max_num_batched_tokens).
    num_scheduled_tokens: req_id -> tokens to compute this step.
    new_reqs: requests new to the runner (first scheduling or resumed after preemption).
    cached_reqs: req_id -> (newly allocated block ids, num_computed_tokens before this step).
    preempted: requests preempted during this step.
    """

    token_budget: int
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    new_reqs: dict[str, NewRequestData] = field(default_factory=dict)
    cached_reqs: dict[str, tuple[list[int], int]] = field(default_factory=dict)
    preempted: list[Request] = field(default_factory=list)
    spec_tokens: dict[str, list[int]] = field(default_factory=dict)

    def add_new(self, request: Request, num_tokens: int, block_ids: list[int]) -> None:
        self.new_reqs[request.request_id] = NewRequestData(
            req_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids[:],
            output_token_ids=request.output_token_ids[:],
            sampling_params=request.sampling_params,
            block_ids=block_ids,
            num_computed_tokens=request.num_computed_tokens,
            lora_request=request.lora_request,
            mm_features=request.mm_features,
            encoder_prompt_token_ids=request.encoder_prompt_token_ids,
        )
        self._take(request.request_id, num_tokens)

    def add_cached(self, request: Request, num_tokens: int, new_block_ids: list[int],
                   spec_tokens: list[int] | None = None) -> None:
        """spec_tokens: drafts verified this step (counted in num_tokens)."""
        self.cached_reqs[request.request_id] = (new_block_ids, request.num_computed_tokens)
        self._take(request.request_id, num_tokens)
        if spec_tokens:
            self.spec_tokens[request.request_id] = spec_tokens

    def _take(self, req_id: str, num_tokens: int) -> None:
        assert 0 < num_tokens <= self.token_budget
        self.num_scheduled_tokens[req_id] = num_tokens
        self.token_budget -= num_tokens

    def unschedule(self, req_id: str) -> None:
        """Undo a running request's scheduling this step (it was preempted after all)."""
        if req_id in self.num_scheduled_tokens:
            self.token_budget += self.num_scheduled_tokens.pop(req_id)
            self.cached_reqs.pop(req_id, None)
            self.new_reqs.pop(req_id, None)
            self.spec_tokens.pop(req_id, None)

    def build(self, finished_req_ids: set[str]) -> SchedulerOutput:
        cached = CachedRequestData()
        for req_id, (new_block_ids, num_computed) in self.cached_reqs.items():
            cached.req_ids.append(req_id)
            cached.new_block_ids.append(new_block_ids)
            cached.num_computed_tokens.append(num_computed)
        return SchedulerOutput(
            scheduled_new_reqs=list(self.new_reqs.values()),
            scheduled_cached_reqs=cached,
            num_scheduled_tokens=dict(self.num_scheduled_tokens),
            total_num_scheduled_tokens=sum(self.num_scheduled_tokens.values()),
            finished_req_ids=finished_req_ids,
            scheduled_spec_decode_tokens=dict(self.spec_tokens),
        )
