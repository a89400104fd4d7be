"""The API process's transformers config of a text model, read from the checkpoint on first use.

Why: the API process used to rebuild the model's transformers config as soon as the engine core
was ready (core_ipc.with_hf_config). Instantiating a transformers model config class (LlamaConfig,
Qwen2Config, ...) imports its validators, which import transformers' activations, hub kernels and
model-loading code: torch.distributed.tensor with sympy, accelerate with boto3, ~1 300 modules and
~65 MiB resident for the 1B Llama GGUF (the GGUF's metadata parsed once more on top), held for the
server's life. A text model's requests read only a few scalar fields of it (is there a vision
tower, an image placeholder token, a token type count ...).

So the engine core, which has the config anyway, sends those fields (`API_FIELDS`) in its
EngineReady, and the API process answers them from there; any other attribute loads the real
config once, as before. Models with a vision tower (`vision_config` set) keep the eager load: their
chat requests read the vision config, and the first such request must not wait for the load.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

API_FIELDS = (
    # every request (InputProcessor.validate_placeholders, serving_chat's extract_images)
    "vision_config", "image_token_index", "image_token_id",
    # requests of some kinds: images (is_dual_encoder), token_type_ids, encoder-decoder prompts
    "model_type", "type_vocab_size", "decoder_start_token_id", "pad_token_id",
    "max_position_embeddings",
    # a LoRA adapter's shape check (peft_config.check_adapter_shapes)
    "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
    "num_hidden_layers",
)  # fmt: skip
"""The transformers config attributes the API process reads of a text model."""

_SCALARS = (type(None), bool, int, float, str)


@dataclass
class HFConfigFields:
    """`API_FIELDS` of a transformers config, as the engine core read them."""

    values: dict[str, Any] = field(default_factory=dict)
    """Name -> value, for the fields whose value is a scalar (None, bool, int, float, str)."""
    absent: list[str] = field(default_factory=list)
    """Fields the config does not have (getattr raises AttributeError)."""

    @property
    def has_vision_tower(self) -> bool:
        """True unless the config has no vision_config or it is None."""
        return "vision_config" not in self.absent and \
            self.values.get("vision_config", True) is not None


def api_fields(hf_config: Any) -> HFConfigFields:
    """The `API_FIELDS` of `hf_config` (a field of another type, e.g. a vision config, is left
    out: reading it loads the config)."""
    fields = HFConfigFields()
    missing = object()
    for name in API_FIELDS:
        value = getattr(hf_config, name, missing)
        if value is missing:
            fields.absent.append(name)
        elif isinstance(value, _SCALARS):
            fields.values[name] = value
    return fields


def read_hf_config(path: str) -> Any:
    """The transformers config of the checkpoint at `path` (local: the engine core resolved it),
    read in this process."""
    from pagedllm.model_executor.model_loader.config import load_hf_config
    from pagedllm.model_executor.model_loader.resolve import resolve_model
    from pagedllm.utils.transformers_import import import_transformers

    import_transformers()  # (the API server's tokenizer thread may be importing it too)
    return load_hf_config(resolve_model(path))


class LazyHFConfig:
    """Stands for the transformers config of the checkpoint at `path`: the fields the engine core
    sent are answered from them, any other attribute loads the config (once, thread-safe) and is
    read from it."""

    def __init__(self, path: str, fields: HFConfigFields) -> None:
        self._path = path
        self._fields = fields
        self._lock = threading.Lock()
        self._config: Any = None

    @property
    def loaded(self) -> bool:
        return self._config is not None

    def load(self) -> Any:
        """The real transformers config (read from the checkpoint at the first call)."""
        with self._lock:
            if self._config is None:
                self._config = read_hf_config(self._path)
            return self._config

    def __getattr__(self, name: str) -> Any:
        # (only names the instance and the class lack get here)
        if name.startswith("__") or "_fields" not in self.__dict__:
            raise AttributeError(name)  # copy and pickle probe dunders; the config has none
        fields = self._fields
        if name in fields.values:
            return fields.values[name]
        if name in fields.absent:
            raise AttributeError(f"the model's config has no attribute {name!r}")
        return getattr(self.load(), name)

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "not loaded yet"
        return f"LazyHFConfig({self._path!r}, {state})"
