"""quantization "gguf": a GGUF file's block-quantized linear weights run without being
dequantized at load. Each shard's blocks are decoded into integer codes + per-group scale/zero
(gguf_blocks.py) and repacked by group_quant.to_kernel: on CPU into the compiled kernel's layout
(4-bit codes packed for Q4_0, Q4_1 and Q4_K, int8 codes for the wider types; K-quant types
keep the file's compact scales instead, quantization/kquant_weight.py), elsewhere into
PyTorch's int4 / int8 weight-only layouts or a per-call dequantization.

The default for a GGUF with quantized linear weights; `quantization="none"` dequantizes instead.
The token embedding (and an untied LM head) keep their GGUF codes too (VocabParallelEmbedding).
"""

from __future__ import annotations

import torch

from pagedllm.logger import init_logger
from pagedllm.model_executor.quantization.base import ROUTER_GATES, QuantizationConfig
from pagedllm.model_executor.quantization.group_quant import concat_rows, to_kernel
from pagedllm.model_executor.quantization.kernels import DenseWeight, QuantizedWeight
from pagedllm.model_executor.quantization.repacked import RepackedLinearMethod

logger = init_logger(__name__)


class GGUFLinearMethod(RepackedLinearMethod):
    """Shards arrive as model_loader.gguf.GGUFWeight (raw blocks) or, for float-typed GGUF
    tensors, as float tensors."""

    def repack(self, layer, shards) -> QuantizedWeight:
        parts = shards["weight"]
        if any(isinstance(p, torch.Tensor) for p in parts):
            if not all(isinstance(p, torch.Tensor) for p in parts):
                logger.warning("%s mixes float and quantized GGUF shards: running it in float",
                               type(layer).__name__)  # fmt: skip
            return DenseWeight(torch.cat([_as_float(p) for p in parts]))
        compact = compact_kquant_weight(parts)
        if compact is not None:
            return compact
        return to_kernel(concat_rows([p.decode() for p in parts]))


def compact_kquant_weight(parts) -> QuantizedWeight | None:
    """GGUF shards all in K-quant types as a KQuantWeight (the file's compact scales, 6-bit
    codes), all Q5_0 or all Q5_1 as a Q5Weight (q5_weight.py), or None where those kernels do
    not take them (then PackedGroupWeight's form)."""
    from pagedllm import envs
    from pagedllm.model_executor.quantization.gguf_kquant import (
        K_TYPES,
        concat_k_rows,
        decode_k_blocks,
    )
    from pagedllm.model_executor.quantization.kquant_weight import (
        KQuantWeight,
        kquant_kernel_fits,
    )

    if not envs.compact_kquant() or any(p.qtype.name not in K_TYPES for p in parts):
        from pagedllm.model_executor.quantization.q5_weight import compact_q5_weight

        return compact_q5_weight(parts)  # Q5_0 / Q5_1: the file's fp16 scales, 5-bit codes
    decoded = [decode_k_blocks(p.data, p.qtype.name, p.shape) for p in parts]
    if any(d is None for d in decoded):
        return None
    kq = concat_k_rows(decoded)
    return KQuantWeight(kq) if kquant_kernel_fits(kq, kq.codes.device) else None


def _as_float(part) -> torch.Tensor:
    return part if isinstance(part, torch.Tensor) else part.decode().dequantize()


class GGUFConfig(QuantizationConfig):
    name = "gguf"

    def __init__(self) -> None:
        # the MoE routers (llama.cpp keeps ffn_gate_inp F32) and MLA's kv_b_proj stay plain float
        # linears: DeepSeek's / GLM-4-MoE's blocks read their .weight (the loader dequantizes
        # one a file stores in blocks: model_loader.gguf.iterate_gguf_weights)
        super().__init__(ROUTER_GATES)

    def get_quant_method(self, layer, prefix):
        return GGUFLinearMethod()
