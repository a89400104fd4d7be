"""Worker: one device's worth of state. It sets the device up (threads, seed, compiled kernels),
loads the model, sizes and allocates the KV cache, picks the execution strategy (fused CPU stack or
eager, logged with the reason) and owns the model runner; the executor calls it, the engine core
never does.

Both engine cores use it: a decoder gets a paged KV cache and a ModelRunner, an encoder-only
model gets no cache and a PoolingRunner. Either way a step is `execute_model(scheduler output)
-> ModelRunnerOutput`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from pagedllm.attention.selector import AttentionRequirements, select_attn_backend
from pagedllm.config import EngineConfig
from pagedllm.core.kv_cache_manager import common_sliding_window
from pagedllm.core.sched.output import ModelRunnerOutput, PoolingSchedulerOutput, SchedulerOutput
from pagedllm.logger import init_logger
from pagedllm.model_executor.layers.attention import attention_layers
from pagedllm.model_executor.model_loader.gguf import release_gguf_readers
from pagedllm.spec_decode.draft_model import DraftModelDrafter, build_draft_model_drafter
from pagedllm.utils.heap_trim import HeapTrimmer
from pagedllm.utils.memory import format_bytes
from pagedllm.worker.cross_attention_plan import plan_cross_attention
from pagedllm.worker.execution_strategy import (
    ExecutionStrategy,
    execution_stats,
    select_execution_strategy,
)
from pagedllm.worker.kv_cache_alloc import (
    allocate_kv_caches,
    kv_cache_torch_dtype,
    plan_kv_cache,
)
from pagedllm.worker.model_runner import ModelRunner
from pagedllm.worker.model_setup import load_model_on_device
from pagedllm.worker.pooling_runner import PoolingRunner
from pagedllm.worker.state_cache import (
    StateCache,
    plan_kv_cache_beside_states,
    plan_state_cache,
)

logger = init_logger(__name__)


@dataclass(frozen=True)
class KVCacheInfo:
    """What the scheduler needs to know of a worker's KV cache (plain data: it crosses
    processes once there are several workers)."""

    num_blocks: int
    """0 for encoder-only models (no cache)."""
    block_size: int
    num_bytes: int
    sliding_window: int | None
    """The window every attention layer shares, None if any layer attends to everything."""
    num_state_slots: int = 0
    """Models with Mamba layers: requests the state cache holds (worker/state_cache.py)."""
    num_cross_attention_tokens: int = 0
    """Encoder-decoders: encoder tokens whose cross-attention K/V the running requests may
    hold together (worker/cross_attention_plan.py); 0 for other models."""


class Worker:
    """rank: this worker's place in the engine core's world (config.parallel.world_size ranks);
    distributed_init_method: where the ranks meet (e.g. tcp://127.0.0.1:port), None for a
    world of one."""

    def __init__(
        self, config: EngineConfig, rank: int = 0, distributed_init_method: str | None = None
    ) -> None:
        self.config = config
        self.rank = rank
        self.distributed_init_method = distributed_init_method
        self.device: torch.device | None = None
        self.model: nn.Module | None = None
        self.model_runner: ModelRunner | PoolingRunner | None = None
        self._execute_seconds = 0.0
        self._num_steps = 0
        self.heap = HeapTrimmer()
        """Gives the heap a long step freed back to the OS (utils/heap_trim.py)."""
        self.execution: ExecutionStrategy | None = None
        """How the decoder layers run (chosen once the KV cache is bound): the fused CPU stack, or
        eager with the reason; None for encoder-only models."""

    def init_device(self) -> None:
        """Join the other ranks (torch.distributed: gloo on CPU, nccl on CUDA) and form the
        tensor-parallel group, before the model is built (its layers read their share)."""
        parallel = self.config.parallel
        if parallel.world_size == 1:
            return
        from pagedllm.distributed import (
            backend_for_device,
            init_distributed_environment,
            initialize_model_parallel,
        )

        assert self.distributed_init_method is not None, "a world of several ranks needs one"
        if self.config.device.device == "cuda":
            # one GPU per rank: "cuda" means the current device from here on (model, cache)
            torch.cuda.set_device(self.rank % torch.cuda.device_count())
        init_distributed_environment(
            parallel.world_size, self.rank, self.distributed_init_method,
            backend_for_device(self.config.device.device),
        )  # fmt: skip
        initialize_model_parallel(parallel.tensor_parallel_size, parallel.enable_expert_parallel,
                                  parallel.pipeline_parallel_size)

    def collective_stats(self) -> dict[str, float]:
        """Collectives of the tensor- and pipeline-parallel groups since the last call
        (benchmarks read the communication time per step: `LLM.collective_rpc(
        "collective_stats")`); zeros for a world of one."""
        from pagedllm.distributed import get_pp_group, get_tp_group

        result = {"calls": 0, "seconds": 0.0}
        for stats in (get_tp_group().stats, get_pp_group().stats):
            result["calls"] += stats.calls
            result["seconds"] += stats.seconds
            stats.calls, stats.seconds = 0, 0.0
        return result

    def execution_stats(self) -> dict[str, object]:
        """The execution strategy and the fused stack's step counts (tests prove the fused path
        ran under -tp: `LLM.collective_rpc("execution_stats")`)."""
        return execution_stats(self.model, self.execution)

    def shutdown(self) -> None:
        """Leave the distributed groups (a worker process's last call)."""
        from pagedllm.distributed import destroy_model_parallel, model_parallel_is_initialized

        if model_parallel_is_initialized():
            destroy_model_parallel()

    def load_model(self) -> None:
        self.device, self.model = load_model_on_device(self.config)
        # NOTE: the model is loaded (and, in-process, the tokenizer built before it): unmap the
        # GGUF file before the KV cache is allocated, so the two never add up in the peak.
        release_gguf_readers()

    def initialize_cache(self) -> KVCacheInfo:
        """Size and allocate the KV cache from the memory left after the weights, bind it to the
        attention layers and build the runner."""
        assert self.model is not None and self.device is not None, "load_model() first"
        config = self.config
        if config.model.is_encoder_only:
            self.model_runner = PoolingRunner(self.model, self.device)
            return KVCacheInfo(0, config.cache.block_size, 0, None)
        layers = attention_layers(self.model)
        needs = AttentionRequirements(
            self.device.type, getattr(torch, config.model.compute_dtype),
            kv_cache_torch_dtype(config.model, config.cache),
            frozenset(layer.head_size for layer in layers),
        )  # fmt: skip
        choice = select_attn_backend(config.device.attention_backend, needs)
        logger.info("attention backend: %s", choice.describe(needs.kv_cache_dtype))
        if config.model.use_mla:  # (its layers keep their own latent cache and attention)
            logger.info("multi-head latent attention: the KV cache holds one latent per token; "
                        "the %s backend attends in no layer", choice.backend.name)
            if config.parallel.tensor_parallel_size > 1:
                logger.info("multi-head latent attention under tensor_parallel_size=%d: heads "
                            "split over the ranks; the latent cache is head-free, so each rank "
                            "holds all of it (replicated)", config.parallel.tensor_parallel_size)
        backend = choice.backend
        tp = config.parallel.tensor_parallel_size
        # Mamba layers: their per-request states take max_num_seqs slots of the budget first
        state_plan = plan_state_cache(config, self.device)
        cross_plan = None
        if config.model.is_encoder_decoder:  # its cross-attention K/V share the budget
            layout, cross_plan = plan_cross_attention(config, self.device)
        elif state_plan is None:
            layout = plan_kv_cache(config.model, config.cache, self.device, tp)
        else:
            layout = plan_kv_cache_beside_states(config, state_plan, self.device)
        kv_caches = allocate_kv_caches(
            layout, config.model, config.cache, backend, self.device, len(layers), tp
        )
        logger.info(
            "KV cache: %d blocks x %d tokens = %d tokens, %s (%s backend, prefix caching %s)",
            layout.num_blocks, layout.block_size, layout.num_tokens,
            format_bytes(layout.total_bytes), backend.name,
            "on" if config.cache.enable_prefix_caching else "off",
        )  # fmt: skip
        state_cache = None
        if state_plan is not None:
            state_cache = StateCache(state_plan, self.device)
            state_cache.bind(self.model)
            logger.info("Mamba state cache: %d slots (max_num_seqs) x %s = %s, %d Mamba layers",
                        state_plan.num_slots, format_bytes(state_plan.spec.bytes_per_slot),
                        format_bytes(state_plan.total_bytes), len(state_plan.spec.mamba_layers))
        lora_manager = None
        if config.lora is not None:
            from pagedllm.lora.model_manager import LoRAModelManager

            lora_manager = LoRAModelManager(self.model, config.lora,
                                            getattr(torch, config.model.compute_dtype), self.device)
        drafter = None
        if config.speculative is not None and config.speculative.method == "draft_model":
            drafter = build_draft_model_drafter(config, self.device, layout.num_tokens)
        self.model_runner = ModelRunner(
            self.model, kv_caches, backend, layout.block_size, config.model.vocab_size,
            config.model.eos_token_ids, self.device,
            pool_last_token=config.model.task == "embed",
            max_num_seqs=config.scheduler.max_num_seqs, max_model_len=config.model.max_model_len,
            speculative_config=config.speculative, drafter=drafter, lora_manager=lora_manager,
            state_cache=state_cache,
            num_cross_attention_tokens=0 if cross_plan is None else cross_plan.num_tokens,
            encoder_cache_size=config.scheduler.resolved_encoder_cache_size(
                config.model.max_model_len),
        )  # fmt: skip
        self.execution = select_execution_strategy(self.model, config.model.enforce_eager,
                                                   config.parallel.tensor_parallel_size)
        self._calibrate_drafts()
        self.heap.trim()  # (what loading and building left free; the start-up resident set)
        if resident := self.heap.resident_bytes():
            logger.info("resident set after start-up: %s (KV cache %s of it)",
                        format_bytes(resident), format_bytes(layout.total_bytes))
        window = common_sliding_window(layer.sliding_window for layer in layers)
        return KVCacheInfo(layout.num_blocks, layout.block_size, layout.total_bytes, window,
                           num_state_slots=0 if state_plan is None else state_plan.num_slots,
                           num_cross_attention_tokens=0 if cross_plan is None
                           else cross_plan.num_tokens)

    def _calibrate_drafts(self) -> None:
        """Speculative decoding with draft_token_cost "auto": measure it on this model, device
        and execution strategy (it sets how long each request's drafts are): the extra forward
        work of verifying k drafts, per draft, plus a draft model's own one-token forward, as
        fractions of a one-token decode step."""
        drafter = self.model_runner.drafter
        if drafter is None or self.config.speculative.draft_token_cost is not None:
            return
        k = self.config.speculative.num_speculative_tokens
        runner = self.model_runner
        runner.measure_forward_seconds(1)  # warm-up
        one = many = float("inf")
        for _ in range(3):  # interleaved: a burst of load on the machine hits both alike
            one = min(one, runner.measure_forward_seconds(1))
            many = min(many, runner.measure_forward_seconds(1 + k))
        verify = max(0.01, (many - one) / (k * one))
        drafting = 0.0
        if isinstance(drafter, DraftModelDrafter):
            drafter.measure_draft_seconds()  # warm-up
            drafting = drafter.measure_draft_seconds() / one
        drafter.cost = verify + drafting
        logger.info("speculative decoding: a draft token costs %.2f of a decode step (verifying "
                    "it %.2f, measured with %d drafts; drafting it %.2f)", drafter.cost, verify,
                    k, drafting)

    def set_drafting(self, enabled: bool) -> None:
        """Pause or resume speculative decoding (benchmarks compare one engine with and without
        drafts: two engines in one process differ by a few percent on their own)."""
        drafter = self.model_runner.drafter
        assert drafter is not None, "speculative decoding is not configured"
        drafter.paused = not enabled

    def get_model(self) -> nn.Module:
        assert self.model is not None, "load_model() first"
        return self.model

    def execute_model(
        self, scheduler_output: SchedulerOutput | PoolingSchedulerOutput
    ) -> ModelRunnerOutput:
        assert self.model_runner is not None, "initialize_cache() first"
        start = time.perf_counter()
        try:
            return self.model_runner.execute_model(scheduler_output)  # type: ignore[arg-type]
        finally:
            self.heap.after_step()
            self._execute_seconds += time.perf_counter() - start
            self._num_steps += 1

    def pipeline_stats(self) -> dict[str, float]:
        """Since the last call: seconds in execute_model, seconds of it spent waiting in the
        pipeline's send/receive (the stage idles there), and steps; benchmarks read a stage's
        busy time as their difference (`LLM.collective_rpc("pipeline_stats")`)."""
        from pagedllm.distributed import get_pp_group

        pp = get_pp_group().stats
        result = {"execute_seconds": self._execute_seconds, "pp_wait_seconds": pp.seconds,
                  "steps": self._num_steps}  # fmt: skip
        self._execute_seconds, self._num_steps = 0.0, 0
        pp.calls, pp.seconds = 0, 0.0
        return result
