"""Shared helpers for core tests: tiny configs, Request factory, and a fake model runner.

(Imported as a plain module: pytest puts tests/core on sys.path since it has no __init__.py.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from pagedllm.config.cache import CacheConfig
from pagedllm.config.scheduler import SchedulerConfig
from pagedllm.core.block_hash import make_block_hasher
from pagedllm.core.sched.output import ModelRunnerOutput, SchedulerOutput
from pagedllm.core.sched.scheduler import Scheduler
from pagedllm.engine.messages import EngineCoreOutputs
from pagedllm.request import Request
from pagedllm.sampling_params import SamplingParams

BLOCK_SIZE = 4
_PROMPT_IDS = itertools.count(1)


def make_request(
    req_id: str,
    prompt: int | list[int],
    max_tokens: int = 4,
    *,
    block_size: int | None = BLOCK_SIZE,
    eos_token_ids: tuple[int, ...] = (),
    arrival_time: float | None = None,
    priority: int = 0,
    **sampling_kwargs: object,
) -> Request:
    """A request; an int prompt means that many tokens no other request shares."""
    if isinstance(prompt, int):
        base = 10_000 * next(_PROMPT_IDS)
        prompt = [base + i for i in range(prompt)]
    params = SamplingParams(max_tokens=max_tokens, **sampling_kwargs)  # type: ignore[arg-type]
    return Request(
        req_id,
        prompt,
        params,
        max_tokens=max_tokens,
        eos_token_ids=eos_token_ids,
        arrival_time=arrival_time,
        priority=priority,
        block_hasher=make_block_hasher(block_size) if block_size else None,
    )


def make_scheduler(
    num_blocks: int = 64,
    max_model_len: int = 64,
    *,
    block_size: int = BLOCK_SIZE,
    enable_prefix_caching: bool = True,
    sliding_window: int | None = None,
    **scheduler_kwargs: object,
) -> Scheduler:
    scheduler_kwargs.setdefault("max_num_batched_tokens", 64)
    return Scheduler(
        SchedulerConfig(**scheduler_kwargs),  # type: ignore[arg-type]
        CacheConfig(block_size=block_size, enable_prefix_caching=enable_prefix_caching),
        num_blocks=num_blocks,
        max_model_len=max_model_len,
        sliding_window=sliding_window,
    )


class FakeRunner:
    """Mirrors the runner's side of the contract and checks it.

    Keeps per-request token lists and block tables built only from SchedulerOutputs, asserts the
    block table covers every scheduled position, "writes" each computed token into its slot and
    checks every request reads back its own tokens (so a wrong prefix hit or a block reused while
    still in use fails), and samples token_fn(req_id, position) when a
    request's chunk reaches its last known token. With sliding_window W, only the slots a chunk
    starting at `start` attends to are checked: positions > start - W (the older blocks may have
    been released and reused).
    """

    def __init__(
        self,
        block_size: int = BLOCK_SIZE,
        token_fn: Callable[[str, int], int] | None = None,
        sliding_window: int | None = None,
    ) -> None:
        self.block_size = block_size
        self.sliding_window = sliding_window
        self.token_fn = token_fn or (lambda req_id, pos: 1 + pos)
        self.tokens: dict[str, list[int]] = {}
        self.block_ids: dict[str, list[int]] = {}
        self.computed: dict[str, int] = {}
        self.new_req_log: list[str] = []
        self.kv: dict[tuple[int, int], int] = {}
        """(block id, offset) -> token whose K/V the slot holds: a stand-in for the KV cache."""

    def execute(self, so: SchedulerOutput) -> ModelRunnerOutput:
        for req_id in so.finished_req_ids:
            self.tokens.pop(req_id, None)
            self.block_ids.pop(req_id, None)
            self.computed.pop(req_id, None)
        for new in so.scheduled_new_reqs:
            assert new.req_id not in self.tokens, f"{new.req_id} resent without being dropped"
            assert min(new.block_ids, default=0) >= 0, f"{new.req_id}: placeholder block id sent"
            self.tokens[new.req_id] = new.prompt_token_ids + new.output_token_ids
            self.block_ids[new.req_id] = list(new.block_ids)
            self.computed[new.req_id] = new.num_computed_tokens
            self.new_req_log.append(new.req_id)
        cached = so.scheduled_cached_reqs
        for req_id, new_ids, start in zip(
            cached.req_ids, cached.new_block_ids, cached.num_computed_tokens
        ):
            assert self.computed[req_id] == start
            self.block_ids[req_id].extend(new_ids)
        for req_id, n in so.num_scheduled_tokens.items():
            start, end = self.computed[req_id], self.computed[req_id] + n
            assert end <= len(self.tokens[req_id])
            assert len(self.block_ids[req_id]) * self.block_size >= end, "block table too short"
            for pos in range(start, end):
                self.kv[self._slot(req_id, pos)] = self.tokens[req_id][pos]
        # Like attention (all cache writes of a layer, then reads): every request must see its
        # own tokens in every slot up to the end of its chunk, prefix hits included.
        sampled: dict[str, list[int]] = {}
        for req_id, n in so.num_scheduled_tokens.items():
            end = self.computed[req_id] + n
            for pos in range(self._first_read(self.computed[req_id]), end):
                assert self.kv.get(self._slot(req_id, pos)) == self.tokens[req_id][pos], (
                    f"{req_id}: slot of position {pos} holds another token"
                )
            self.computed[req_id] = end
            if end == len(self.tokens[req_id]):
                token = self.token_fn(req_id, end)
                self.tokens[req_id].append(token)
                sampled[req_id] = [token]
        return ModelRunnerOutput(req_ids=list(so.num_scheduled_tokens), sampled_token_ids=sampled)

    def _first_read(self, start: int) -> int:
        """First key position a chunk whose first query sits at `start` attends to."""
        if self.sliding_window is None:
            return 0
        return max(0, start - self.sliding_window + 1)

    def _slot(self, req_id: str, pos: int) -> tuple[int, int]:
        return self.block_ids[req_id][pos // self.block_size], pos % self.block_size


def step(scheduler: Scheduler, runner: FakeRunner) -> tuple[SchedulerOutput, EngineCoreOutputs]:
    so = scheduler.schedule()
    return so, scheduler.update_from_output(so, runner.execute(so))


def run_to_completion(
    scheduler: Scheduler, runner: FakeRunner, max_steps: int = 1000
) -> tuple[dict[str, list[int]], dict[str, str], list[SchedulerOutput]]:
    """Step until no request is left: (tokens per request, finish reason per request, outputs)."""
    tokens: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    history: list[SchedulerOutput] = []
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return tokens, reasons, history
        so, outs = step(scheduler, runner)
        history.append(so)
        for out in outs.outputs:
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finish_reason is not None:
                reasons[out.request_id] = out.finish_reason.value
    raise AssertionError(f"not finished after {max_steps} steps: {scheduler.running}")
