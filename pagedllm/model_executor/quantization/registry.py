"""Quantization method names -> lazily imported QuantizationConfig classes, and the resolution of
the user's `quantization` argument against what the checkpoint holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pagedllm.utils.registry import Registry

if TYPE_CHECKING:
    from pagedllm.config.model import ModelConfig
    from pagedllm.model_executor.quantization.base import QuantizationConfig

_PKG = "pagedllm.model_executor.quantization"
QUANTIZATION_METHODS = Registry("quantization method")
QUANTIZATION_METHODS.register("int8", f"{_PKG}.weight_only_int8", "Int8Config")
QUANTIZATION_METHODS.register("int4", f"{_PKG}.weight_only_int4", "Int4Config")
QUANTIZATION_METHODS.register("gguf", f"{_PKG}.gguf", "GGUFConfig")
QUANTIZATION_METHODS.register("awq", f"{_PKG}.awq", "AWQConfig")
QUANTIZATION_METHODS.register("gptq", f"{_PKG}.gptq", "GPTQConfig")

UNQUANTIZED_NAMES = ("none", "dequantize")
"""User spellings of "run the weights in --dtype" (a quantized GGUF is dequantized at load)."""
_CHECKPOINT_METHODS = ("gguf", "awq", "gptq")
"""Methods that name a checkpoint format (they cannot be applied to another format)."""


def resolve_quantization(requested: str | None, fmt: str, hf_config: Any, gguf_quantized: bool):
    """The method to run with (None: unquantized), from the user's choice and the checkpoint.

    requested None/"auto": what the checkpoint holds ("gguf" for a GGUF with quantized linear
    weights, the quant_method of config.json's quantization_config), else None.
    """
    found = "gguf" if gguf_quantized else checkpoint_quant_method(hf_config)
    if requested in (None, "auto"):
        return found
    requested = requested.lower()
    if requested in UNQUANTIZED_NAMES:
        if found in ("awq", "gptq"):
            raise ValueError(f"this is a {found} checkpoint: it needs quantization={found!r}")
        return None
    if requested not in QUANTIZATION_METHODS:
        choices = ["auto", *UNQUANTIZED_NAMES, *QUANTIZATION_METHODS.names()]
        raise ValueError(f"quantization must be one of {choices}, got {requested!r}")
    if requested in _CHECKPOINT_METHODS and requested != found:
        raise ValueError(
            f"quantization={requested!r} needs a {requested} checkpoint; this one is "
            f"{found or 'unquantized ' + fmt}"
        )
    if requested not in _CHECKPOINT_METHODS and found in ("awq", "gptq"):
        raise ValueError(f"quantization={requested!r} cannot re-quantize a {found} checkpoint")
    return requested


def checkpoint_quant_method(hf_config: Any) -> str | None:
    """config.json's quantization_config.quant_method ("awq", "gptq", ...), or None."""
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None:
        return None
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = str(getattr(method, "value", method)).lower()
    if method not in QUANTIZATION_METHODS:
        raise ValueError(
            f"checkpoint quantization {method!r} is not supported; supported: awq, gptq"
        )
    return method


def create_quant_config(
    model_config: ModelConfig, packed_modules_mapping: Mapping[str, Sequence[str]]
) -> QuantizationConfig | None:
    """The config of model_config.quantization (None: unquantized); packed_modules_mapping is the
    model class's (a merged layer is skipped by its checkpoint modules' names)."""
    if model_config.quantization is None:
        return None
    config_cls = QUANTIZATION_METHODS.get(model_config.quantization)
    config = config_cls.from_hf_config(model_config.hf_config)
    config.packed_modules_mapping = packed_modules_mapping
    return config
