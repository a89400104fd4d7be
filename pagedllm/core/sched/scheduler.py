"""Scheduler: one token budget per step over running and waiting requests (vLLM v1 style).

There are no prefill or decode phases: each request has num_computed_tokens catching up with
num_tokens, and each step hands out up to max_num_batched_tokens tokens, running requests first
(a decode takes 1, an unfinished prefill a chunk), then waiting ones (new or preempted). Mixed
prefill+decode batches, chunked prefill, prefix hits and recompute-preemption all fall out of
that one loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pagedllm.config.cache import CacheConfig
from pagedllm.config.scheduler import SchedulerConfig
from pagedllm.core.block_hash import make_block_hasher
from pagedllm.core.cross_attention_budget import CrossAttentionBudget
from pagedllm.core.encoder_cache_manager import EncoderCacheManager, EncoderInputsPlan
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.sched.fair_share import create_waiting_queue
from pagedllm.core.sched.lora_residency import LoRAResidency
from pagedllm.core.sched.output import (
    EngineCoreOutput,
    EngineCoreOutputs,
    LogprobsLists,
    ModelRunnerOutput,
    SchedulerOutput,
)
from pagedllm.core.sched.step import StepBuilder
from pagedllm.core.sched.stop import check_stop
from pagedllm.core.state_slots import StateSlotPool
from pagedllm.metrics.stats import LoRAStats, SchedulerStats, SpecDecodingStats
from pagedllm.request import BlockHasher, FinishReason, Request, RequestStatus

if TYPE_CHECKING:
    from pagedllm.structured_output.manager import StructuredOutputManager


class Scheduler:
    """Decides, each step, which tokens of which requests the model runner computes.

    State:
    - requests: every unfinished request by id (waiting, preempted or running).
    - waiting: queue of requests not holding blocks (new, or preempted: status PREEMPTED).
    - running: requests holding blocks, in admission order (the last is preempted first
      under fcfs).
    - finished_req_ids: requests finished, aborted or preempted since the last schedule(); sent
      to the runner in the next SchedulerOutput so it drops their state.
    - block_hasher: the BlockHasher Requests must be built with for prefix caching (None when
      prefix caching is off).

    sliding_window: the window shared by every attention layer of the model, if any (see
    common_sliding_window): the KV cache manager then releases blocks that fell out of it.

    structured_output_manager: compiles constrained requests' grammars (a request waits in the
    queue, skipped, until its grammar is ready), writes each step's token bitmask into the
    SchedulerOutput and advances the matchers with the sampled tokens.

    max_loras / max_cpu_loras (multi-LoRA): at most max_loras distinct adapters among the
    running requests (the runner's slots); a waiting request is admitted once the workers hold
    its adapter in CPU memory (lora_residency.py: loaded in the background, max_cpu_loras kept).

    num_state_slots (models with Mamba layers): the worker's state cache holds that many
    requests' states; a request is admitted only when a slot and its KV blocks are both free,
    and gives both back when it finishes or is preempted (core/state_slots.py). 0: no states.

    encoder_cache (vision-language models): which images' encoder outputs the worker holds,
    keyed by image hash, within scheduler_config.encoder_cache_size embedding tokens
    (core/encoder_cache_manager.py); a chunk reaching an image that does not fit is cut before
    it and the request waits.

    num_cross_attention_tokens (encoder-decoders): encoder tokens whose cross-attention K/V the
    worker holds for the running requests together (core/cross_attention_budget.py); a request
    is admitted only when its encoder prompt fits too (else it waits, or under the priority
    policy preempts a lower-priority request), and gives the tokens back with its blocks.
    0: not an encoder-decoder.
    """

    def __init__(
        self,
        scheduler_config: SchedulerConfig,
        cache_config: CacheConfig,
        num_blocks: int,
        max_model_len: int,
        block_hasher: BlockHasher | None = None,
        sliding_window: int | None = None,
        structured_output_manager: StructuredOutputManager | None = None,
        max_loras: int | None = None,
        max_cpu_loras: int | None = None,
        num_state_slots: int = 0,
        num_cross_attention_tokens: int = 0,
    ) -> None:
        _check_capacity(scheduler_config, cache_config, num_blocks, max_model_len)
        if num_state_slots and cache_config.enable_prefix_caching:
            # a prefix hit would skip tokens whose effect on the states is kept nowhere
            raise ValueError("prefix caching must be off for a model with per-request states")
        self.scheduler_config = scheduler_config
        self.max_model_len = max_model_len
        caching = cache_config.enable_prefix_caching
        self.kv_cache_manager = KVCacheManager(
            num_blocks, cache_config.block_size, caching, max_model_len, sliding_window
        )
        if block_hasher is None and caching:
            block_hasher = make_block_hasher(cache_config.block_size)
        self.block_hasher = block_hasher if caching else None
        self.requests: dict[str, Request] = {}
        self.waiting = create_waiting_queue(scheduler_config.policy, lambda: self.running)
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()
        self.structured_output_manager = structured_output_manager
        self._failed: list[tuple[Request, str]] = []
        """Requests whose grammar failed since the last update: reported finished (abort)."""
        self._num_preemptions = 0
        """Preemptions since the last stats record."""
        self._admit_lacked_blocks = False
        """Why the last _admit failed: KV blocks (True) or the step's token budget (False)."""
        self.max_loras = max_loras
        """Multi-LoRA: the most distinct adapters the running requests may use (the runner's
        resident slots); None: LoRA off."""
        self.lora_residency = (None if max_loras is None
                               else LoRAResidency(max(max_loras, max_cpu_loras or 0)))
        """Multi-LoRA: which adapters the workers hold in CPU memory (None: LoRA off)."""
        self._lora_slot_evictions = 0
        self.state_slots = StateSlotPool(num_state_slots) if num_state_slots else None
        """Mamba layers: which request holds which slot of the state cache (None: no states)."""
        self.cross_attention = (CrossAttentionBudget(num_cross_attention_tokens)
                                if num_cross_attention_tokens else None)
        """Encoder-decoders: the running requests' cross-attention memory (None: other models)."""
        self.pipeline_parallel = False
        """Set by the engine core under pipeline parallelism: several steps are in flight, so
        a scheduled request is not scheduled again until its step returns (in_flight, as in
        vLLM), and every chunk's token ids go in the step (CachedRequestData.new_token_ids)
        for the stages that do not sample."""
        self.in_flight: set[str] = set()
        """Requests of steps sent but not yet updated (pipeline_parallel only)."""
        self.encoder_cache = EncoderCacheManager(
            scheduler_config.resolved_encoder_cache_size(max_model_len))
        """Images' encoder outputs: the worker holds those this admits (requests with images
        only; text requests never touch it)."""

    # ---- request lifecycle ------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        assert request.num_prompt_tokens <= self.max_model_len, "engine must reject long prompts"
        assert request.request_id not in self.requests, f"duplicate {request.request_id!r}"
        if self.structured_output_manager is not None:
            self.structured_output_manager.add_request(request)
        self.requests[request.request_id] = request
        self.waiting.add(request)
        if self.lora_residency is not None and request.lora_request is not None:
            self.lora_residency.acquire(request.lora_request)

    def finish_requests(self, req_ids: str | Iterable[str], finished_status: RequestStatus) -> None:
        """Finish requests from outside (abort, stop string): free blocks, drop from queues."""
        assert RequestStatus.is_finished(finished_status)
        for req_id in [req_ids] if isinstance(req_ids, str) else req_ids:
            request = self.requests.get(req_id)
            if request is None:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            request.status = finished_status
            self._free_request(request)

    def _free_request(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        self.encoder_cache.free(request.request_id)
        if self.state_slots is not None:
            self.state_slots.free(request.request_id)
        if self.cross_attention is not None:
            self.cross_attention.free(request.request_id)
        self.finished_req_ids.add(request.request_id)
        del self.requests[request.request_id]
        if self.lora_residency is not None and request.lora_request is not None:
            self.lora_residency.release(request.lora_request)

    def get_request(self, req_id: str) -> Request | None:
        return self.requests.get(req_id)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def get_num_unfinished_requests(self) -> int:
        return len(self.running) + len(self.waiting)

    def has_unfinished_requests(self) -> bool:
        return self.get_num_unfinished_requests() > 0

    def has_finished_requests(self) -> bool:
        """Finished ids the runner has not been told about yet (a schedule() would send them)."""
        return bool(self.finished_req_ids)

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache_manager.reset_prefix_cache()

    def remove_lora(self, lora_id: int) -> bool:
        """The user unloaded an adapter: the workers drop their copy (at once, or when its last
        request ends). False when they do not hold it."""
        return self.lora_residency is not None and self.lora_residency.remove(lora_id)

    # ---- schedule -----------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's tokens. request.num_computed_tokens is advanced by the scheduled
        counts at the end, so the output carries each request's start position."""
        step = StepBuilder(token_budget=self.scheduler_config.max_num_batched_tokens)
        self._schedule_running(step)
        if not step.preempted:
            self._schedule_waiting(step)
        self._num_preemptions += len(step.preempted)
        output = step.build(self.finished_req_ids)
        self.finished_req_ids = set()
        output.free_encoder_mm_hashes = self.encoder_cache.take_freed()
        if self.lora_residency is not None:
            commands = self.lora_residency.take_commands()
            output.lora_loads, output.lora_drops = commands.loads, commands.drops
        if self.pipeline_parallel:
            cached = output.scheduled_cached_reqs
            cached.new_token_ids = [
                self.requests[r].all_token_ids[start : start + output.num_scheduled_tokens[r]]
                for r, start in zip(cached.req_ids, cached.num_computed_tokens)]
            self.in_flight.update(output.num_scheduled_tokens)
        for req_id, num_tokens in output.num_scheduled_tokens.items():
            request = self.requests[req_id]
            request.num_computed_tokens += num_tokens
            if request.mm_features:  # images now in the KV cache: their entries freeable
                self.encoder_cache.release_consumed(req_id, request.mm_features,
                                                    request.num_computed_tokens)
        if self.structured_output_manager is not None:
            sampling = [r for r in map(self.requests.__getitem__, output.num_scheduled_tokens)
                        if r.structured_output is not None
                        and r.num_computed_tokens >= r.num_tokens]
            ids, bitmask = self.structured_output_manager.grammar_bitmask(
                sampling, output.scheduled_spec_decode_tokens)
            output.structured_output_request_ids, output.grammar_bitmask = ids, bitmask
        return output

    def waiting_for_grammar(self) -> list[Request]:
        """Waiting requests whose grammar is still compiling."""
        return [r for r in self.waiting
                if r.structured_output is not None and not r.structured_output.is_ready]

    def _schedule_running(self, step: StepBuilder) -> None:
        for request in list(self.running):
            if step.token_budget == 0:
                return
            if request.status != RequestStatus.RUNNING or request.request_id in self.in_flight:
                continue  # preempted earlier in this loop, or its last step has not returned
            remaining = request.num_tokens - request.num_computed_tokens
            num_new = self._chunk_size(remaining, step.token_budget)
            num_new = self._plan_encoder_inputs(request, num_new).num_new_tokens
            if num_new == 0:
                continue  # (or waits for room in the encoder cache)
            drafts = self._drafts(request, remaining, step.token_budget - num_new)
            new_block_ids = self._allocate_or_preempt(request, num_new + len(drafts), step)
            if new_block_ids is None:
                return  # the request itself was preempted
            step.add_cached(request, num_new + len(drafts), new_block_ids, drafts)

    def _drafts(self, request: Request, remaining: int, budget: int) -> list[int]:
        """The drafts a decode verifies this step: as many as the budget holds, and no more than
        the request may still emit (each verify emits up to drafts + 1 tokens)."""
        if remaining != 1 or not request.spec_token_ids:
            return []
        room = min(request.max_tokens - request.num_output_tokens,
                   self.max_model_len - request.num_tokens) - 1
        return request.spec_token_ids[:max(0, min(budget, room))]

    def _schedule_waiting(self, step: StepBuilder) -> None:
        max_num_seqs = self.scheduler_config.max_num_seqs
        skipped: list[Request] = []
        while self.waiting and step.token_budget > 0:
            request = self.waiting.peek()
            if request.request_id in self.in_flight:
                skipped.append(self.waiting.pop())  # preempted while its step runs: after it
                continue
            if not self._grammar_ready(request):
                if not request.is_finished():
                    skipped.append(self.waiting.pop())  # compiling: the others go ahead
                continue
            if not self._lora_fits(request) or not self._lora_loaded(request):
                # waits for a slot, or for its adapter to load: other requests go ahead
                skipped.append(self.waiting.pop())
                continue
            if len(self.running) >= max_num_seqs and not self._preempt_lower_priority(
                    request, step):
                break
            if not self._admit(request, step):
                # Only a lack of KV blocks is worth a preemption (its blocks are then free: try
                # again); a spent token budget is not, the request goes first next step anyway.
                if self._admit_lacked_blocks and self._preempt_lower_priority(request, step):
                    continue
                break
        for request in reversed(skipped):
            self.waiting.prepend(request)

    def _preempt_lower_priority(self, request: Request, step: StepBuilder) -> bool:
        """Priority policy: make room for a waiting request by preempting the running request
        of lowest priority (latest arrival among equals) if its priority is strictly lower than
        the waiting one's; equal priorities never preempt each other here (no churn). The
        victim goes back to the waiting queue, behind `request`."""
        if self.scheduler_config.policy != "priority" or not self.running:
            return False
        victim = self._pick_victim()
        if victim.priority <= request.priority or victim.request_id in step.new_reqs:
            return False
        self._preempt(victim, step)
        return True

    def _lora_fits(self, request: Request) -> bool:
        """Whether admitting the request keeps the running requests within max_loras distinct
        adapters (every running request may be scheduled in one step)."""
        lora = request.lora_request
        if lora is None or self.max_loras is None:
            return True
        running = {r.lora_request.lora_int_id for r in self.running if r.lora_request}
        return lora.lora_int_id in running or len(running) < self.max_loras

    def _lora_loaded(self, request: Request) -> bool:
        """Whether the workers hold the request's adapter in CPU memory (asking them to load
        it if not): the step that admits it never reads the adapter from disk."""
        lora = request.lora_request
        if lora is None or self.lora_residency is None:
            return True
        return self.lora_residency.is_ready(lora)

    def _grammar_ready(self, request: Request) -> bool:
        """False while the request's grammar compiles; a grammar that failed finishes it."""
        manager = self.structured_output_manager
        if manager is None or manager.grammar_ready(request):
            state = request.structured_output
            if state is not None and state.failed:
                self.waiting.remove(request)
                self._fail(request, state.failed)
                return False
            return True
        return False

    def _fail(self, request: Request, reason: str) -> None:
        request.status = RequestStatus.FINISHED_ABORTED
        self._failed.append((request, reason))
        self._free_request(request)

    def _chunk_size(self, num_remaining: int, budget: int) -> int:
        """Tokens to schedule for a request with num_remaining uncomputed tokens (0: none).

        NOTE: no max_model_len cap is needed: num_tokens <= max_model_len always holds (prompts
        are checked on add, check_stop ends a request when it reaches max_model_len).
        """
        config = self.scheduler_config
        if not config.enable_chunked_prefill:
            return num_remaining if num_remaining <= budget else 0
        threshold = config.long_prefill_token_threshold
        if threshold is not None and threshold > 0:
            num_remaining = min(num_remaining, threshold)
        return min(num_remaining, budget)

    def _plan_encoder_inputs(self, request: Request, num_new: int,
                             start: int | None = None) -> EncoderInputsPlan:
        """Cut the chunk before the first image whose encoder output neither is cached nor
        fits in the encoder cache (referencing or allocating the ones before it)."""
        if not request.mm_features or num_new == 0:
            return EncoderInputsPlan(num_new)
        return self.encoder_cache.schedule_inputs(
            request.request_id, request.mm_features,
            request.num_computed_tokens if start is None else start, num_new,
            allow_partial=self.scheduler_config.enable_chunked_prefill)

    def _allocate_or_preempt(
        self, request: Request, num_new: int, step: StepBuilder
    ) -> list[int] | None:
        """Allocate slots for a running request, preempting others until it fits.
        None if the request had to preempt itself."""
        while True:
            new_block_ids = self.kv_cache_manager.allocate_slots(request, num_new)
            if new_block_ids is not None:
                return new_block_ids
            victim = self._pick_victim()
            self._preempt(victim, step)
            if victim is request:
                return None

    def _pick_victim(self) -> Request:
        if self.scheduler_config.policy == "priority":
            return max(self.running, key=lambda r: (r.priority, r.arrival_time))
        return self.running[-1]

    def _preempt(self, request: Request, step: StepBuilder) -> None:
        """Recompute-preemption: drop the request's blocks and requeue it at the front."""
        self.running.remove(request)
        step.unschedule(request.request_id)
        step.preempted.append(request)
        self.kv_cache_manager.free(request)
        self.encoder_cache.free(request.request_id)  # (entries stay cached: reused on resume)
        if self.state_slots is not None:  # recomputed from position 0 on resume
            self.state_slots.free(request.request_id)
        if self.cross_attention is not None:  # re-encoded on resume
            self.cross_attention.free(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.waiting.prepend(request)
        self.finished_req_ids.add(request.request_id)

    def _admit(self, request: Request, step: StepBuilder) -> bool:
        """Try to schedule the head waiting request (new or resumed); never preempts."""
        assert request.num_computed_tokens == 0
        kvm = self.kv_cache_manager
        hit_blocks, num_hit_tokens = kvm.get_computed_blocks(request)
        num_new = self._chunk_size(request.num_tokens - num_hit_tokens, step.token_budget)
        self._admit_lacked_blocks = False
        if num_new == 0:
            return False
        if self.state_slots is not None and self.state_slots.num_free == 0:
            self._admit_lacked_blocks = True  # (a preempted request's slot would do too)
            return False
        num_encoder_tokens = len(request.encoder_prompt_token_ids or ())
        if self.cross_attention is not None and not self.cross_attention.fits(num_encoder_tokens):
            self._admit_lacked_blocks = True  # (a preempted request's tokens would do too)
            return False
        plan = self._plan_encoder_inputs(request, num_new, num_hit_tokens)
        num_new = plan.num_new_tokens
        if num_new == 0:
            return False  # waits for room in the encoder cache
        if kvm.allocate_slots(request, num_new, num_hit_tokens, hit_blocks) is None:
            self.encoder_cache.cancel(request.request_id, plan)
            self._admit_lacked_blocks = True
            return False
        self.waiting.pop()
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = num_hit_tokens
        if request.num_cached_tokens is None:
            request.num_cached_tokens = num_hit_tokens
        self.running.append(request)
        step.add_new(request, num_new, kvm.get_block_ids(request.request_id))
        if self.state_slots is not None:
            step.new_reqs[request.request_id].state_slot = self.state_slots.allocate(
                request.request_id)
        if self.cross_attention is not None:
            self.cross_attention.allocate(request.request_id, num_encoder_tokens)
        return True

    # ---- update -------------------------------------------------------------------------------

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> EngineCoreOutputs:
        """Append sampled tokens, apply stop rules, free finished requests."""
        self.in_flight.difference_update(scheduler_output.num_scheduled_tokens)
        if self.lora_residency is not None:
            self._update_loras(runner_output)
        num_prompt_tokens = self._count_prompt_tokens(scheduler_output)
        outputs: list[EngineCoreOutput] = []
        num_generated = 0
        spec_stats = SpecDecodingStats()
        for req_id in scheduler_output.num_scheduled_tokens:
            request = self.requests.get(req_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue  # finished from outside while the step ran
            sampled = runner_output.sampled_token_ids.get(req_id)
            drafts = scheduler_output.scheduled_spec_decode_tokens.get(req_id)
            if drafts:
                self._settle_drafts(request, drafts, sampled or [], spec_stats)
            new_token_ids = self._append_tokens(request, sampled)
            if request.structured_output is not None:
                self._advance_grammar(request, new_token_ids)
            num_generated += len(new_token_ids)
            output = _make_output(request, new_token_ids, runner_output)
            if output is not None:
                outputs.append(output)
            if request.is_finished():
                self._free_request(request)
            else:
                request.spec_token_ids = self._usable_drafts(
                    request, runner_output.spec_token_ids.get(req_id, []))
        self.running = [r for r in self.running if not r.is_finished()]
        outputs.extend(_failed_output(request, reason) for request, reason in self._failed)
        self._failed = []
        stats = self.make_stats(num_prompt_tokens, num_generated)
        if spec_stats.num_drafts:
            stats.spec_decoding_stats = spec_stats
        return EngineCoreOutputs(outputs=outputs, scheduler_stats=stats)

    def _update_loras(self, runner_output: ModelRunnerOutput) -> None:
        """Adapters the workers loaded become admissible; a failed load aborts the requests
        waiting for it (with the reason)."""
        assert self.lora_residency is not None
        self.lora_residency.on_loaded(runner_output.lora_loaded)
        self._lora_slot_evictions += runner_output.num_lora_slot_evictions
        for lora_id, reason in runner_output.lora_failed.items():
            self.lora_residency.on_failed(lora_id)
            for request in [r for r in self.waiting
                            if r.lora_request and r.lora_request.lora_int_id == lora_id]:
                self.waiting.remove(request)
                self._fail(request, reason)

    def _usable_drafts(self, request: Request, drafts: list[int]) -> list[int]:
        """A constrained request keeps the drafts its grammar allows (the others would be
        rejected anyway, and the verify rows past them would have no mask)."""
        if request.structured_output is None or not drafts:
            return drafts
        assert self.structured_output_manager is not None
        return self.structured_output_manager.draft_prefix(request, drafts)

    def _settle_drafts(self, request: Request, drafts: list[int], sampled: list[int],
                       stats: SpecDecodingStats) -> None:
        """The runner kept the first len(sampled) - 1 drafts: the rejected ones' cache slots
        hold nothing valid, so the request's computed tokens step back over them (their blocks
        stay allocated and are overwritten by the next tokens)."""
        num_accepted = max(0, len(sampled) - 1)
        request.num_computed_tokens -= len(drafts) - num_accepted
        stats.observe(len(drafts), num_accepted)

    def _append_tokens(self, request: Request, token_ids: list[int] | None) -> list[int]:
        """Append tokens one by one; stop at the first that finishes the request."""
        kept: list[int] = []
        for token_id in token_ids or []:
            request.append_output_token_ids(token_id)
            kept.append(token_id)
            if check_stop(request, self.max_model_len):
                break
        return kept

    def _advance_grammar(self, request: Request, new_token_ids: list[int]) -> None:
        """Feed the matcher; a finished grammar stops the request (even with ignore_eos)."""
        manager = self.structured_output_manager
        assert manager is not None and request.structured_output is not None
        if not manager.accept_tokens(request, new_token_ids):
            request.status = RequestStatus.FINISHED_ABORTED
            request.stop_reason = request.structured_output.failed
            return
        grammar = request.structured_output.grammar
        if not request.is_finished() and grammar is not None and grammar.is_terminated():
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = None

    def _count_prompt_tokens(self, scheduler_output: SchedulerOutput) -> int:
        """Prompt tokens computed by the step (prefix hits are not scheduled, so not counted)."""
        starts = {d.req_id: d.num_computed_tokens for d in scheduler_output.scheduled_new_reqs}
        cached = scheduler_output.scheduled_cached_reqs
        starts.update(zip(cached.req_ids, cached.num_computed_tokens))
        total = 0
        for req_id, num_tokens in scheduler_output.num_scheduled_tokens.items():
            request = self.requests.get(req_id)
            if request is not None:
                end = min(starts[req_id] + num_tokens, request.num_prompt_tokens)
                total += max(0, end - starts[req_id])
        return total

    def make_stats(self, num_prompt_tokens: int = 0, num_generated: int = 0) -> SchedulerStats:
        kvm = self.kv_cache_manager
        stats = SchedulerStats(
            num_running_reqs=len(self.running),
            num_waiting_reqs=len(self.waiting),
            kv_cache_usage=kvm.usage,
            num_free_blocks=kvm.num_free_blocks,
            num_total_blocks=kvm.num_blocks,
            prefix_cache_stats=kvm.make_prefix_cache_stats(),
            num_preemptions=self._num_preemptions,
            num_prompt_tokens=num_prompt_tokens,
            num_generation_tokens=num_generated,
            lora_stats=self._lora_stats(),
        )
        self._num_preemptions = 0
        return stats

    def _lora_stats(self) -> LoRAStats | None:
        if self.lora_residency is None:
            return None
        loads, evictions = self.lora_residency.take_counts()
        slot_evictions, self._lora_slot_evictions = self._lora_slot_evictions, 0
        return LoRAStats(
            num_loads=loads, num_cpu_evictions=evictions, num_slot_evictions=slot_evictions,
            running_lora_adapters=_adapter_names(self.running),
            waiting_lora_adapters=_adapter_names(self.waiting),
            max_lora=self.max_loras or 0,
        )  # fmt: skip


def _adapter_names(requests: Iterable[Request]) -> list[str]:
    return sorted({r.lora_request.lora_name for r in requests if r.lora_request is not None})


def _make_output(
    request: Request, new_token_ids: list[int], runner_output: ModelRunnerOutput
) -> EngineCoreOutput | None:
    """The request's output for this step, or None if there is nothing to report."""
    logprobs = _trim(runner_output.logprobs.get(request.request_id), len(new_token_ids))
    prompt_logprobs = runner_output.prompt_logprobs.get(request.request_id)
    finish_reason = request.get_finish_reason()
    if not new_token_ids and prompt_logprobs is None and finish_reason is None:
        return None
    return EngineCoreOutput(
        request_id=request.request_id,
        new_token_ids=new_token_ids,
        new_logprobs=logprobs,
        new_prompt_logprobs=prompt_logprobs,
        finish_reason=finish_reason,
        stop_reason=request.stop_reason,
        num_cached_tokens=request.num_cached_tokens or 0,
    )


def _failed_output(request: Request, reason: str) -> EngineCoreOutput:
    """A request ended by the engine, not the client: its stream must end too."""
    return EngineCoreOutput(request_id=request.request_id, new_token_ids=[],
                            finish_reason=FinishReason.ABORT, stop_reason=reason)


def _trim(logprobs: LogprobsLists | None, num_rows: int) -> LogprobsLists | None:
    """Drop logprob rows of tokens discarded after a stop."""
    if logprobs is None or len(logprobs.ranks) <= num_rows:
        return logprobs
    return LogprobsLists(
        logprobs.token_ids[:num_rows], logprobs.logprobs[:num_rows], logprobs.ranks[:num_rows]
    )


def _check_capacity(
    scheduler_config: SchedulerConfig,
    cache_config: CacheConfig,
    num_blocks: int,
    max_model_len: int,
) -> None:
    """Configurations under which some admissible request could never be scheduled."""
    capacity = num_blocks * cache_config.block_size
    if capacity < max_model_len:
        raise ValueError(
            f"KV cache holds {capacity} tokens ({num_blocks} blocks of "
            f"{cache_config.block_size}), less than max_model_len={max_model_len}: "
            "raise the KV cache memory or lower max_model_len"
        )
    batched = scheduler_config.max_num_batched_tokens
    if not scheduler_config.enable_chunked_prefill and batched < max_model_len:
        raise ValueError(
            f"max_num_batched_tokens ({batched}) must be >= max_model_len ({max_model_len}) "
            "when chunked prefill is disabled"
        )
