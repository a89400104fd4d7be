"""ModelConfig: what model runs, in what dtype, for how long a context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pagedllm.config.pooler import ClassifierConfig, PoolerConfig

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
QUANTIZED_ACTIVATION_DTYPES = ("int16", "int8")
"""--quantized-activation-dtype: what the compiled quantized linears quantize activations to."""


@dataclass(frozen=True)
class ModelConfig:
    model: str
    """What the user asked for: a name, a directory or a .gguf file."""
    path: str
    """Resolved local path: a Hugging Face-layout directory or a .gguf file."""
    format: Literal["hf", "gguf"]
    """Checkpoint format: safetensors directory or a single GGUF file."""
    architecture: str
    """The config's `architectures[0]`, the key of the model registry."""
    hf_config: Any = field(repr=False, compare=False)
    """The transformers PretrainedConfig (read from config.json or from GGUF metadata)."""
    dtype: str = "float32"
    """The model's dtype after resolving "auto": its float weights' storage dtype."""
    compute_dtype: str = ""
    """The dtype activations (and the KV cache's "auto") run in: `dtype`, except on a CPU with
    pagedllm's kernels, which compute bfloat16/float16 models in float32 from weights kept in
    their half dtype (widened exactly as they are read: float32's results from half the bytes)."""
    max_model_len: int = 2048
    """Longest sequence (prompt + output) a request may have."""
    vocab_size: int = 0
    hidden_size: int = 0
    num_hidden_layers: int = 0
    num_attention_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    use_mla: bool = False
    """Multi-head latent attention (DeepSeek-V2/V3): the KV cache holds one latent per token and
    layer, head_dim = kv_lora_rank + qk_rope_head_dim values with num_kv_heads 1, instead of a K
    and a V head each (vLLM's `use_mla`)."""
    eos_token_ids: tuple[int, ...] = ()
    """Token ids that end generation unless ignore_eos (from generation/tokenizer config)."""
    quantization: str | None = None
    """Weight quantization method (None: weights run in `dtype`)."""
    quantized_activation_dtype: str = "int16"
    """Activations of the compiled quantized linears (PackedGroupWeight): "int16" or "int8"
    (model_executor/quantization/activation_dtype.py)."""
    enforce_eager: bool = False
    """Run the model module by module in eager PyTorch (no fused compiled decoder layers)."""
    seed: int = 0
    """Default seed for requests without one."""
    task: Literal["generate", "embed", "classify"] = "generate"
    """What the engine serves: generated text, one embedding per prompt, or one set of label
    scores per prompt (sequence classifiers and cross-encoders)."""
    pooler: PoolerConfig | None = None
    """How hidden states become an embedding (task "embed" only)."""
    classifier: ClassifierConfig | None = None
    """The labels and their activation (task "classify" only)."""
    is_encoder_only: bool = False
    """A bidirectional encoder (BERT): runs on the pooling core, without a KV cache."""
    is_encoder_decoder: bool = False
    """An encoder-decoder (BART, T5): the prompt is the encoder's input, the cache shape fields
    above describe the decoder's self-attention, and each request's cross-attention K/V is kept
    by the runner (worker/encoder_decoder.py)."""

    def __post_init__(self) -> None:
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {self.dtype!r}")
        if not self.compute_dtype:
            object.__setattr__(self, "compute_dtype", self.dtype)
        if self.compute_dtype not in (self.dtype, "float32"):
            raise ValueError(f"compute_dtype {self.compute_dtype!r} for a {self.dtype} model")
        if self.quantized_activation_dtype not in QUANTIZED_ACTIVATION_DTYPES:
            raise ValueError(f"quantized_activation_dtype must be one of "
                             f"{QUANTIZED_ACTIVATION_DTYPES}, got "
                             f"{self.quantized_activation_dtype!r}")
        if self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if (self.task == "embed") != (self.pooler is not None):
            raise ValueError(f"task {self.task!r} needs a pooler config exactly when 'embed'")
        if (self.task == "classify") != (self.classifier is not None):
            raise ValueError(f"task {self.task!r} needs a classifier config exactly when "
                             f"'classify'")
        if self.is_encoder_only and self.task == "generate":
            raise ValueError(f"{self.architecture} is an encoder: it serves task 'embed' or "
                             f"'classify', not generation")

    @property
    def served_name(self) -> str:
        return self.model
