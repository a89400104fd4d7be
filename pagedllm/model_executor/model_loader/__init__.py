"""get_model: ModelConfig -> a loaded, eval-mode nn.Module on the target device and dtype."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.logger import init_logger
from pagedllm.model_executor.custom_op import float_weight_storage
from pagedllm.model_executor.models.registry import get_model_class, implementation_of
from pagedllm.model_executor.quantization.activation_dtype import set_quantized_activation_dtype
from pagedllm.model_executor.quantization.base import QuantizationConfig
from pagedllm.model_executor.quantization.kquant_weight import log_kquant_form
from pagedllm.model_executor.quantization.registry import create_quant_config
from pagedllm.model_executor.quantization.scope import quantization_scope

logger = init_logger(__name__)


def get_model(model_config: ModelConfig, device: torch.device | str) -> nn.Module:
    """Build the registered architecture directly on `device` in `model_config.compute_dtype`
    (no initialisation pass, no CPU copy), its kernels' float weights in `model_config.dtype`,
    load its checkpoint and check nothing was left out."""
    start = time.perf_counter()
    model_cls = get_model_class(model_config.architecture)
    _check_tensor_parallel(model_cls, model_config)
    quant_config = create_quant_config(
        model_config, getattr(model_cls, "packed_modules_mapping", {})
    )
    weight_dtype = getattr(torch, model_config.dtype)
    with (
        _default_dtype(getattr(torch, model_config.compute_dtype)),
        float_weight_storage(weight_dtype if model_config.compute_dtype != model_config.dtype
                             else None),
        torch.device(device),
        quantization_scope(quant_config),
    ):
        model = model_cls(model_config)
    loaded = model.load_weights(iterate_weights(model_config))
    _check_all_loaded(model, loaded, model_config)
    for module in model.modules():
        quant_method = getattr(module, "quant_method", None)
        if quant_method is not None:
            quant_method.process_weights_after_loading(module)
    if quant_config is not None:
        _quantize_vocab_embeddings(model, quant_config)
    set_quantized_activation_dtype(model, model_config.quantized_activation_dtype)
    log_kquant_form(model)
    model.eval()
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Loaded %s (%s, %s implementation, %s, quantization %s, %.1fM float parameters) in %.2f s",
        model_config.model, model_config.architecture,
        implementation_of(model_config.architecture), _dtype_words(model_config),
        model_config.quantization, num_params / 1e6, time.perf_counter() - start,
    )  # fmt: skip
    return model


def _check_tensor_parallel(model_cls: type[nn.Module], model_config: ModelConfig) -> None:
    """A family that is not split-aware refuses a tensor-parallel group at build time."""
    from pagedllm.distributed import get_pp_group, get_tensor_model_parallel_world_size

    tp = get_tensor_model_parallel_world_size()
    reason = getattr(model_cls, "parallel_refusal", None)  # (a family's own reason, if any)
    if tp > 1 and not getattr(model_cls, "supports_tensor_parallel", False):
        raise ValueError(f"{model_config.architecture} does not run with tensor_parallel_size="
                         f"{tp} in pagedllm ({reason or 'its layers are not split across ranks'})")
    pp = get_pp_group().world_size
    if pp > 1 and not getattr(model_cls, "supports_pipeline_parallel", False):
        reason = reason or "its model does not pass hidden states between stages"
        raise ValueError(f"{model_config.architecture} does not run with pipeline_parallel_size="
                         f"{pp} in pagedllm ({reason})")
    if getattr(model_cls, "supports_multimodal", False) and (tp > 1 or pp > 1):
        logger.info("%s: the language model is split (tensor_parallel_size=%d, "
                    "pipeline_parallel_size=%d); the vision tower and projector are replicated "
                    "on every rank (the first stage's ranks run them)",
                    model_config.architecture, tp, pp)


def _dtype_words(model_config: ModelConfig) -> str:
    if model_config.compute_dtype == model_config.dtype:
        return model_config.dtype
    return (f"{model_config.dtype} weights computed in {model_config.compute_dtype} "
            "(widened exactly by the CPU kernels)")  # fmt: skip


def _quantize_vocab_embeddings(model: nn.Module, quant_config: QuantizationConfig) -> None:
    """A quantized model keeps its token embedding / LM head in int8 too (GGUF files store them
    quantized; for --quantization int8/int4 it is the largest float matrix left), unless the
    config names it in modules_to_not_convert (a tied LM head by its embedding's name)."""
    from pagedllm.model_executor.layers.embedding import VocabParallelEmbedding

    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and not quant_config.is_skipped(
            module.prefix
        ):
            module.quantize_()


def iterate_weights(model_config: ModelConfig) -> Iterator[tuple[str, Any]]:
    """(HF name, tensor) pairs of the checkpoint, whatever its format."""
    if model_config.format == "gguf":
        from pagedllm.model_executor.model_loader.gguf import iterate_gguf_weights

        # quantization "gguf": linear weights stay in their GGUF blocks for the GGUF method to
        # repack; embeddings and norms are dequantized.
        return iterate_gguf_weights(
            model_config.path, keep_quantized=model_config.quantization == "gguf"
        )
    from pagedllm.model_executor.model_loader.hf import iterate_hf_weights

    return iterate_hf_weights(model_config.path)


def _check_all_loaded(model: nn.Module, loaded: set[str], model_config: ModelConfig) -> None:
    # NOTE: named_parameters() lists a tied lm_head once, under the embedding's name.
    missing = sorted(set(dict(model.named_parameters())) - loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise ValueError(
            f"{model_config.path}: the checkpoint lacks {len(missing)} parameter(s): {shown}"
        )


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def estimate_weight_bytes(model_config: ModelConfig) -> int:
    """Bytes the weights take once loaded (read from checkpoint headers, without loading any
    tensor): model_config.dtype, except GGUF linear weights run in their own blocks."""
    elem = torch.tensor([], dtype=getattr(torch, model_config.dtype)).element_size()
    if model_config.format == "gguf":
        from pagedllm.model_executor.model_loader.gguf import (
            gguf_architecture,
            gguf_to_hf_name,
            is_block_quantized,
            open_gguf,
        )

        reader = open_gguf(model_config.path)
        arch = gguf_architecture(reader)

        def kept_quantized(t: Any) -> bool:  # linears and vocabulary tables keep their blocks
            name = gguf_to_hf_name(t.name, arch)
            return (
                model_config.quantization == "gguf"
                and name is not None
                and (is_block_quantized(t.tensor_type))
            )

        return sum(
            int(t.n_bytes) if kept_quantized(t) else elem * int(t.n_elements)
            for t in reader.tensors
        )
    from safetensors import safe_open

    from pagedllm.model_executor.model_loader.hf import checkpoint_files

    total = 0
    for path in checkpoint_files(model_config.path):
        if not path.endswith(".safetensors"):
            import os

            return os.path.getsize(path)  # .bin: its size is the best cheap estimate
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                numel = 1
                for dim in f.get_slice(key).get_shape():
                    numel *= dim
                total += numel
    return total * elem
