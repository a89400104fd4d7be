"""EngineArgs: the user's knobs (LLM kwargs and CLI flags) -> a validated EngineConfig."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pagedllm import envs
from pagedllm.config import (
    CacheConfig,
    DeviceConfig,
    EngineConfig,
    LoRAConfig,
    ModelConfig,
    MultiModalConfig,
    ParallelConfig,
    SchedulerConfig,
    SpeculativeConfig,
    StructuredOutputsConfig,
)
from pagedllm.config.state_cache import check_state_model_features, prefix_caching_for
from pagedllm.utils.memory import parse_memory_size


@dataclass
class EngineArgs:
    model: str | None = None
    """Local HF directory, .gguf file, "SmolLM2-135M-Instruct" (embedded default) or hub name."""
    dtype: str = "auto"
    max_model_len: int | None = None
    kv_cache_memory: str | int | None = None
    """KV cache budget, e.g. "2GiB"; None: a fraction of the free memory."""
    block_size: int = 16
    enable_prefix_caching: bool = True
    max_num_seqs: int = 128
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    seed: int = 0
    device: str = "auto"
    attention_backend: str | None = None
    num_threads: int | None = None
    cpu_omp_threads_bind: str | None = None
    """"auto", "nobind" or per-rank CPU lists "0-3|4-7" (None: PAGEDLLM_CPU_OMP_THREADS_BIND,
    else "auto"); platforms/cpu_binding.py."""
    quantization: str | None = None
    """Weight quantization: None/"auto" (what the checkpoint holds), "none", "int8", "int4",
    "gguf", "awq", "gptq"."""
    kv_cache_dtype: str = "auto"
    """KV cache storage: "auto" (the model dtype), "fp16" (half precision: llama.cpp's default
    cache), "int8" or "fp8" (8 bits + a scale per token and head)."""
    quantized_activation_dtype: str = "int16"
    """Activations of the compiled quantized linears: "int16" (default) or "int8" (faster
    batched on AVX-512 VNNI, llama.cpp's precision; greedy tokens may differ from the float
    model's)."""
    num_gpu_blocks_override: int | None = None
    scheduling_policy: str = "fcfs"
    task: str = "auto"
    """"generate", "embed" (decoders: last-token pooling), "classify" (sequence classifiers,
    cross-encoders; "score" is an alias), or "auto" (classify or embed for encoders)."""
    enforce_eager: bool = False
    """Run the model module by module in eager PyTorch instead of the fused compiled decoder
    layers (as vLLM's flag turns off CUDA graphs / torch.compile)."""
    structured_outputs_config: str | dict[str, Any] | StructuredOutputsConfig | None = None
    """Grammar backend and options (vLLM's --structured-outputs-config, JSON or a dict)."""
    reasoning_parser: str | None = None
    """A reasoning model's parser (--reasoning-parser): its thinking is left unconstrained."""
    speculative_config: str | dict[str, Any] | SpeculativeConfig | None = None
    """Speculative decoding (vLLM's --speculative-config, JSON or a dict); None: off."""
    enable_lora: bool = False
    """Serve LoRA adapters over the base model (requests pick one with a LoRARequest)."""
    max_loras: int = 1
    """Distinct adapters in one step (resident slots)."""
    max_lora_rank: int = 16
    """Largest adapter rank accepted."""
    max_cpu_loras: int | None = None
    """Adapters cached in CPU memory (None: max_loras)."""
    tensor_parallel_size: int = 1
    """Ranks each layer is split over (-tp)."""
    pipeline_parallel_size: int = 1
    """Pipeline stages (-pp): the decoder layers split into consecutive groups."""
    data_parallel_size: int = 1
    """Engine cores, each its own process, behind one front end (-dp; engine/dp_client.py)."""
    data_parallel_routing: str = "prefix_aware"
    """How a request picks its core: "prefix_aware" or "least_loaded" (config/parallel.py)."""
    data_parallel_backend: str = "mp"
    """"mp" (engine-core processes here) or "ray" (Ray actors, possibly on other machines)."""
    data_parallel_size_local: int | None = None
    """Engine cores on this machine (ray: placed on the API server's node; engine/ray_core.py);
    in a core's own arguments, the cores on its machine."""
    data_parallel_rank_local: int = 0
    """Set for each core by the data-parallel client: its index among the cores on its
    machine."""
    enable_expert_parallel: bool = False
    """MoE experts spread whole over the tensor-parallel ranks."""
    distributed_executor_backend: str | None = None
    """"uni", "mp" or "ray"; None: "uni" for one rank, "mp" for several."""
    ray_address: str | None = None
    """The Ray cluster the "ray" backend joins (None: RAY_ADDRESS, else a local one)."""
    limit_mm_per_prompt: str | dict[str, int] | None = None
    """Images per prompt, vLLM's form: '{"image": 2}' or a dict (None: one)."""
    max_image_bytes: int | None = None
    """Encoded size of one image (None: 20 MiB)."""
    max_image_pixels: int | None = None
    """Width x height of one image (None: 4096 x 4096)."""
    allowed_local_media_path: str | None = None
    """Directory file:// image URLs may be read from (None: local files refused)."""
    allowed_media_domains: list[str] | None = None
    """Hosts http(s) image URLs may be fetched from (None: remote URLs refused)."""
    encoder_cache_size: int | None = None
    """Vision-language models: image embedding tokens the encoder cache may hold (vLLM's
    SchedulerConfig.encoder_cache_size; None: max(max_num_batched_tokens, max_model_len))."""

    def create_engine_config(self) -> EngineConfig:
        from pagedllm.model_executor.model_loader.config import load_model_config

        device = resolve_device(self.device)
        model_config = load_model_config(
            self.model,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            seed=self.seed,
            quantization=self.quantization,
            device=device,
            task=self.task,
            enforce_eager=self.enforce_eager,
        )
        model_config = replace(
            model_config, quantized_activation_dtype=self.quantized_activation_dtype
        )
        cache_config = CacheConfig(
            block_size=self.block_size,
            kv_cache_memory=(
                parse_memory_size(self.kv_cache_memory) if self.kv_cache_memory else None
            ),
            # NOTE: encoder-decoder blocks hold K/V that depend on the encoder input too, which
            # the block hashes do not cover (vLLM turns prefix caching off for them as well)
            enable_prefix_caching=(
                prefix_caching_for(model_config.hf_config, model_config.architecture,
                                   self.enable_prefix_caching)
                and not model_config.is_encoder_decoder),
            kv_cache_dtype=self.kv_cache_dtype,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
        )
        batched = self.max_num_batched_tokens
        if batched is None:
            batched = 2048 if self.enable_chunked_prefill else model_config.max_model_len
        scheduler_config = SchedulerConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=batched,
            enable_chunked_prefill=self.enable_chunked_prefill,
            policy=self.scheduling_policy,
            encoder_cache_size=self.encoder_cache_size,
        )
        device_config = DeviceConfig(
            device=device, attention_backend=self.attention_backend, num_threads=self.num_threads,
            cpu_omp_threads_bind=self.cpu_omp_threads_bind or envs.cpu_omp_threads_bind(),
        )
        structured_outputs = StructuredOutputsConfig.parse(
            self.structured_outputs_config, reasoning_parser=self.reasoning_parser
        )
        speculative = SpeculativeConfig.parse(self.speculative_config)
        check_state_model_features(model_config.hf_config, model_config.architecture,
                                   None if speculative is None else speculative.method)
        return EngineConfig(
            model_config, cache_config, scheduler_config, device_config, structured_outputs,
            speculative=_with_draft_model(speculative, model_config, device),
            lora=self._lora_config(),
            multimodal=MultiModalConfig.parse(
                self.limit_mm_per_prompt, max_image_bytes=self.max_image_bytes,
                max_image_pixels=self.max_image_pixels,
                allowed_local_media_path=self.allowed_local_media_path,
                allowed_media_domains=self.allowed_media_domains),
            parallel=self._parallel_config(),
        )

    def _parallel_config(self) -> ParallelConfig:
        return ParallelConfig(
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
            data_parallel_size=self.data_parallel_size,
            data_parallel_routing=self.data_parallel_routing,
            data_parallel_backend=self.data_parallel_backend,
            data_parallel_size_local=self.data_parallel_size_local,
            data_parallel_rank_local=self.data_parallel_rank_local,
            enable_expert_parallel=self.enable_expert_parallel,
            distributed_executor_backend=self.distributed_executor_backend,
            ray_address=self.ray_address,
        )

    def _lora_config(self) -> LoRAConfig | None:
        if not self.enable_lora:
            return None
        return LoRAConfig(max_loras=self.max_loras, max_lora_rank=self.max_lora_rank,
                          max_cpu_loras=self.max_cpu_loras)


def _with_draft_model(spec: SpeculativeConfig | None, target: ModelConfig, device: str
                      ) -> SpeculativeConfig | None:
    """method draft_model: resolve the draft's ModelConfig (the target's dtype, context length
    and device) and refuse a draft whose vocabulary differs from the target's, at start-up."""
    if spec is None or spec.method != "draft_model" or spec.draft_model_config is not None:
        return spec
    from pagedllm.model_executor.model_loader.config import load_model_config

    draft = load_model_config(
        spec.model, dtype=target.dtype, max_model_len=target.max_model_len, seed=target.seed,
        quantization=spec.quantization, device=device, task="generate",
        enforce_eager=target.enforce_eager,
    )  # fmt: skip
    if draft.vocab_size != target.vocab_size:
        raise ValueError(
            f"the draft model {draft.model} has a vocabulary of {draft.vocab_size} tokens and "
            f"the target {target.model} one of {target.vocab_size}: a draft model must share "
            f"the target's tokenizer"
        )
    return replace(spec, draft_model_config=draft)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

