"""EngineConfig: the aggregate of every concern's config, built once by EngineArgs."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedllm.config.cache import CacheConfig
from pagedllm.config.device import DeviceConfig
from pagedllm.config.lora import LoRAConfig
from pagedllm.config.model import ModelConfig
from pagedllm.config.multimodal import MultiModalConfig
from pagedllm.config.parallel import ParallelConfig
from pagedllm.config.scheduler import SchedulerConfig
from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.config.state_cache import mamba_state_spec
from pagedllm.config.structured_outputs import StructuredOutputsConfig


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    device: DeviceConfig
    structured_outputs: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)
    speculative: SpeculativeConfig | None = None
    """Speculative decoding (None: off)."""
    lora: LoRAConfig | None = None
    """Multi-LoRA serving (None: off, requests may not name an adapter)."""
    multimodal: MultiModalConfig = field(default_factory=MultiModalConfig)
    """Image limits and sources (used by vision-language models only)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor parallelism and where the ranks run."""

    def __post_init__(self) -> None:
        if not self.scheduler.enable_chunked_prefill and (
            self.scheduler.max_num_batched_tokens < self.model.max_model_len
        ):
            raise ValueError(
                f"with chunked prefill disabled, max_num_batched_tokens "
                f"({self.scheduler.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.model.max_model_len})"
            )
        self._check_parallel()
        self._check_encoder_decoder()

    def _check_encoder_decoder(self) -> None:
        """What encoder-decoders (BART, T5) do not run with yet, named."""
        if not self.model.is_encoder_decoder:
            return
        what = self.model.architecture
        if self.parallel.pipeline_parallel_size > 1:
            raise ValueError(f"{what} is an encoder-decoder; it does not run with "
                             f"pipeline_parallel_size={self.parallel.pipeline_parallel_size} "
                             f"(its decoder layers read every request's encoder output, which "
                             f"is computed on one stage; use tensor_parallel_size)")
        if self.speculative is not None:
            raise ValueError(f"{what} is an encoder-decoder; speculative decoding does not run "
                             f"it yet")
        if self.lora is not None:
            raise ValueError(f"{what} is an encoder-decoder; LoRA adapters do not run on it")

    def _check_parallel(self) -> None:
        """Refuse what does not run split over ranks yet, naming it."""
        tp, pp = self.parallel.tensor_parallel_size, self.parallel.pipeline_parallel_size
        split = f"tensor_parallel_size={tp}, pipeline_parallel_size={pp}"
        if tp * pp == 1:
            return
        if self.speculative is not None and self.speculative.method == "draft_model":
            raise ValueError(f"a draft model does not run with {split} yet (the drafter is a "
                             f"second whole model inside the target's worker, neither split "
                             f"over the ranks nor staged; use the ngram or suffix method)")
        if self.model.is_encoder_only:
            raise ValueError(f"{self.model.architecture} is an encoder; encoders do not run "
                             f"with {split}")
        if pp > self.model.num_hidden_layers:
            raise ValueError(f"{self.model.num_hidden_layers} layers cannot be split into "
                             f"pipeline_parallel_size={pp} stages")
        states = mamba_state_spec(self.model.hf_config, tp)  # (refuses an uneven split)
        if states is not None and states.num_attention_layers == 0:
            return  # (Mamba: no attention heads to split; the mixers check their channels)
        if self.model.num_attention_heads % tp:
            raise ValueError(f"{self.model.num_attention_heads} attention heads cannot be split "
                             f"over tensor_parallel_size={tp}")
        kv = self.model.num_kv_heads
        if kv % tp and tp % kv:
            raise ValueError(f"{kv} KV heads cannot be split or replicated over "
                             f"tensor_parallel_size={tp}")
