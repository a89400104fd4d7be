"""The model argument -> a validated, frozen ModelConfig (transformers config + our fields)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from pagedllm.config.model import ModelConfig
from pagedllm.config.pooler import ClassifierConfig, PoolerConfig
from pagedllm.model_executor.model_loader.resolve import ModelSource, resolve_model

_DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}  # fmt: skip


def load_model_config(
    model: str | None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    seed: int = 0,
    quantization: str | None = None,
    device: str = "cpu",
    task: str = "auto",
    enforce_eager: bool = False,
) -> ModelConfig:
    """Resolve `model`, read its config and fill every ModelConfig field (see config/model.py)."""
    source = resolve_model(model)
    hf_config = load_hf_config(source)
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise ValueError(f"{source.name}: the config names no architecture ('architectures')")
    embedding = resolve_embedding(task, architectures[0], source, hf_config)
    # A vision-language model (LLaVA) nests its decoder's config: the cache and the lengths are
    # the text model's; hf_config stays the whole config (the model needs the vision part).
    text_config = text_config_of(hf_config)
    encdec = encoder_decoder_dims(architectures[0], text_config)
    if encdec is not None and max_model_len is None:
        max_model_len = encdec.pop("default_max_model_len")
    if max_model_len is None and embedding.max_seq_length is not None:
        max_model_len = min(embedding.max_seq_length, resolve_max_model_len(None, text_config))
    # (a model without attention, Mamba, has no heads: 1 keeps the KV arithmetic defined)
    num_heads = getattr(text_config, "num_attention_heads", None) or 1
    stack = {"num_hidden_layers": text_config.num_hidden_layers, "num_attention_heads": num_heads,
             **kv_cache_heads(architectures[0], text_config)}
    if encdec is not None:
        encdec.pop("default_max_model_len", None)
        stack.update(encdec)
    model_dtype = resolve_dtype(dtype, hf_config, device)
    return ModelConfig(
        model=source.name,
        path=source.file,
        format=source.kind,
        architecture=architectures[0],
        hf_config=hf_config,
        dtype=model_dtype,
        compute_dtype=resolve_compute_dtype(model_dtype, device),
        max_model_len=resolve_max_model_len(max_model_len, text_config),
        vocab_size=text_config.vocab_size,
        hidden_size=text_config.hidden_size,
        **stack,
        eos_token_ids=tuple(sorted(eos_token_ids(source, hf_config)
                                   | eos_token_ids(source, text_config))),
        quantization=_resolve_quantization(quantization, source, hf_config),
        enforce_eager=enforce_eager,
        seed=seed,
        task=embedding.task,
        pooler=embedding.pooler,
        classifier=embedding.classifier,
        is_encoder_only=embedding.encoder_only,
        is_encoder_decoder=encdec is not None,
    )


def encoder_decoder_dims(architecture: str, hf_config: Any) -> dict[str, Any] | None:
    """An encoder-decoder's cache shape: its decoder's layers and heads (BART and T5 may give
    the encoder other counts; T5's heads are d_kv wide whatever d_model is), and the default
    max_model_len where the config has no position table (T5: 512, its training length).
    None for every other architecture."""
    from pagedllm.model_executor.models.registry import ENCODER_DECODER_ARCHITECTURES

    if architecture not in ENCODER_DECODER_ARCHITECTURES:
        return None
    c = hf_config
    layers = getattr(c, "decoder_layers", None) or getattr(c, "num_decoder_layers", None)
    heads = getattr(c, "decoder_attention_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "d_kv", None) or c.d_model // heads
    default_len = getattr(c, "max_position_embeddings", None) or 512
    return {"num_hidden_layers": layers or c.num_hidden_layers, "num_attention_heads": heads,
            "num_kv_heads": heads, "head_dim": head_dim, "use_mla": False,
            "default_max_model_len": default_len}


def kv_cache_heads(architecture: str, hf_config: Any) -> dict[str, Any]:
    """num_kv_heads, head_dim and use_mla: what one token's KV cache entry holds per layer. MLA
    models (DeepSeek-V2/V3) cache one latent of kv_lora_rank + qk_rope_head_dim values."""
    from pagedllm.model_executor.models.registry import MLA_ARCHITECTURES

    kv_lora_rank = getattr(hf_config, "kv_lora_rank", None)
    if architecture in MLA_ARCHITECTURES and kv_lora_rank:
        head_dim = kv_lora_rank + hf_config.qk_rope_head_dim
        return {"num_kv_heads": 1, "head_dim": head_dim, "use_mla": True}
    num_heads = getattr(hf_config, "num_attention_heads", None) or 1
    return {
        "num_kv_heads": getattr(hf_config, "num_key_value_heads", None) or num_heads,
        "head_dim": getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads,
        "use_mla": False,
    }


def text_config_of(hf_config: Any) -> Any:
    """The decoder's config: a multimodal config's text_config, else the config itself."""
    if getattr(hf_config, "vision_config", None) is not None:
        text = getattr(hf_config, "text_config", None)
        if text is not None:
            return text
    return hf_config


@dataclass(frozen=True)
class _EmbeddingSetup:
    task: Literal["generate", "embed", "classify"]
    pooler: PoolerConfig | None
    encoder_only: bool
    max_seq_length: int | None
    """sentence-transformers' truncation length, the default max_model_len when set."""
    classifier: ClassifierConfig | None = None


def resolve_embedding(task: str, architecture: str, source: ModelSource,
                      hf_config: Any) -> _EmbeddingSetup:
    """"auto": classify for sequence classifiers, embed for the other encoders (BertModel),
    generate otherwise."""
    from pagedllm.model_executor.model_loader.pooling import (
        load_pooler_config,
        sentence_max_seq_length,
    )
    from pagedllm.model_executor.models.registry import is_encoder_only, is_sequence_classifier

    if task == "score":  # vLLM's older name for a cross-encoder's task
        task = "classify"
    if task not in ("auto", "generate", "embed", "classify"):
        raise ValueError(f"task must be 'auto', 'generate', 'embed' or 'classify', got {task!r}")
    encoder = is_encoder_only(architecture)
    classifier = is_sequence_classifier(architecture)
    if task == "generate" and encoder:
        raise ValueError(f"{architecture} is an encoder: use task 'embed' or 'classify' (or "
                         f"'auto')")
    if task == "generate" or (task == "auto" and not encoder):
        return _EmbeddingSetup("generate", None, False, None)
    model_dir = source.path if source.kind == "hf" else None
    if task == "classify" or (task == "auto" and classifier):
        if not classifier:
            raise ValueError(f"{architecture} has no classification head: task 'classify' needs "
                             f"a *ForSequenceClassification model")
        return _EmbeddingSetup("classify", None, True, sentence_max_seq_length(model_dir),
                               classifier_config(hf_config))
    if classifier:
        raise ValueError(f"{architecture} is a classifier: it serves task 'classify'")
    pooler = load_pooler_config(model_dir, hf_config, encoder)
    return _EmbeddingSetup("embed", pooler, encoder, sentence_max_seq_length(model_dir))


def classifier_config(hf_config: Any) -> ClassifierConfig:
    """Labels from id2label (label ids in order); sigmoid for one label or a multi-label
    problem, softmax otherwise (the activation transformers' loss for that head implies)."""
    num_labels = hf_config.num_labels
    id2label = {int(k): str(v) for k, v in (getattr(hf_config, "id2label", None) or {}).items()}
    labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(num_labels))
    multi_label = getattr(hf_config, "problem_type", None) == "multi_label_classification"
    return ClassifierConfig(labels, "sigmoid" if num_labels == 1 or multi_label else "softmax")


def _resolve_quantization(requested: str | None, source: ModelSource, hf_config: Any):
    from pagedllm.model_executor.quantization.registry import resolve_quantization

    gguf_quantized = False
    if source.kind == "gguf":
        from pagedllm.model_executor.model_loader.gguf import gguf_has_quantized_linears

        gguf_quantized = gguf_has_quantized_linears(source.file)
    return resolve_quantization(requested, source.kind, hf_config, gguf_quantized)


def load_hf_config(source: ModelSource) -> Any:
    """The transformers PretrainedConfig of a resolved model."""
    if source.kind == "gguf":
        from pagedllm.model_executor.model_loader.gguf import gguf_hf_config

        return gguf_hf_config(source.file)
    from transformers import AutoConfig

    config = unshipped_native_config(source.path)
    if config is not None:
        return config
    try:
        # never the model folder's own code (auto_map): False, not None, which would ask on stdin
        return AutoConfig.from_pretrained(source.path, trust_remote_code=False)
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise ValueError(refuse_remote_code(source.path)) from e


def refuse_remote_code(path: str) -> str:
    """The message for a model that only loads with its own Python code."""
    return (f"{path}: this model's config or tokenizer is Python code shipped in the model "
            f"folder (auto_map), and pagedllm never runs code from a model folder "
            f"(--trust-remote-code is not supported); use a model whose architecture pagedllm "
            f"or transformers ships")


def unshipped_native_config(path: str) -> Any:
    """A plain PretrainedConfig of config.json where its model type is one transformers does
    not ship (the config class is the checkpoint's remote code, e.g. InternLM2) and its
    architecture runs natively; else None. (AutoConfig would ask on stdin to trust the remote
    code.)"""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from pagedllm.model_executor.models.registry import MODEL_REGISTRY

    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return None
    with open(config_file, encoding="utf-8") as f:
        raw = json.load(f)
    if raw.get("model_type") in CONFIG_MAPPING:
        return None
    architectures = raw.get("architectures") or []
    if not architectures or architectures[0] not in MODEL_REGISTRY:
        return None
    return PretrainedConfig.from_dict(raw)


def resolve_dtype(dtype: str, hf_config: Any, device: str) -> str:
    """"auto": the checkpoint's half dtype (float16 for a float32 one) on an accelerator; on the
    CPU the checkpoint's bfloat16/float16 where pagedllm's kernels run (they keep such weights in
    it and compute in float32: exactly the float32 model's numbers from half the bytes), else
    float32 (ATen's bf16 matmuls are slow without AMX, and rounding float32 weights would change
    the model)."""
    if dtype != "auto":
        if dtype.lower() not in _DTYPE_ALIASES:
            choices = sorted(_DTYPE_ALIASES)
            raise ValueError(f"dtype must be 'auto' or one of {choices}, got {dtype!r}")
        return _DTYPE_ALIASES[dtype.lower()]
    # (transformers >= 4.56 names it `dtype`, and reading `torch_dtype` from such a config logs
    # a deprecation warning at every engine start; earlier versions have only `torch_dtype`)
    name = "dtype" if hasattr(hf_config, "dtype") else "torch_dtype"
    checkpoint = getattr(hf_config, name, None)
    checkpoint = str(checkpoint).removeprefix("torch.")
    half = checkpoint in ("bfloat16", "float16")
    if str(device).startswith("cpu"):
        return checkpoint if half and _cpu_kernels() else "float32"
    return checkpoint if half else "float16"


def resolve_compute_dtype(model_dtype: str, device: str) -> str:
    """See ModelConfig.compute_dtype: float32 for a half model on a CPU with pagedllm's kernels."""
    if str(device).startswith("cpu") and model_dtype != "float32" and _cpu_kernels():
        return "float32"
    return model_dtype


def _cpu_kernels() -> bool:
    from pagedllm.kernels import cpu_kernels_available

    return cpu_kernels_available()


def resolve_max_model_len(max_model_len: int | None, hf_config: Any) -> int:
    limit = getattr(hf_config, "max_position_embeddings", None)
    if limit is not None and getattr(hf_config, "model_type", "") in ("roberta", "xlm-roberta"):
        # RoBERTa's positions start at padding_idx + 1: that many table rows never hold a token.
        limit -= hf_config.pad_token_id + 1
    if max_model_len is None:
        if limit is None:
            raise ValueError("the config has no max_position_embeddings; pass max_model_len")
        return limit
    if limit is not None and max_model_len > limit:
        raise ValueError(
            f"max_model_len={max_model_len} is larger than the model's "
            f"max_position_embeddings={limit}"
        )
    return max_model_len


def eos_token_ids(source: ModelSource, hf_config: Any) -> set[int]:
    """Union of the config's, generation_config.json's and (GGUF) the tokenizer's EOS ids."""
    ids = _as_id_set(getattr(hf_config, "eos_token_id", None))
    if source.kind == "gguf":
        from pagedllm.model_executor.model_loader.gguf import gguf_eos_token_ids

        return ids | gguf_eos_token_ids(source.file)
    generation_config = os.path.join(source.path, "generation_config.json")
    if os.path.isfile(generation_config):
        with open(generation_config) as f:
            ids |= _as_id_set(json.load(f).get("eos_token_id"))
    return ids


def _as_id_set(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}
