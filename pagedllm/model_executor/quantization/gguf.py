"""quantization "gguf": a GGUF file's block-quantized linear weights run without being
dequantized at load. Each shard's blocks are decoded into integer codes + per-group scale/zero
(gguf_blocks.py) and repacked: 4-bit types (Q4_0, Q4_1, Q4_K) into PyTorch's int4 packed layout,
the others (Q5_0, Q5_1, Q8_0, Q5_K, Q6_K) into int8 codes dequantized per call (kernels.py).

The default for a GGUF with quantized linear weights; `quantization="none"` dequantizes instead.
NOTE: the token embedding (and an untied LM head) are not linear layers here: they are loaded
dequantized in the model dtype.
"""

from __future__ import annotations

import torch

from pagedllm.logger import init_logger
from pagedllm.model_executor.quantization.base import QuantizationConfig
from pagedllm.model_executor.quantization.gguf_blocks import decode_gguf_blocks
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
        return to_kernel(concat_rows([_decode(p) for p in parts]))


def _decode(weight):
    return decode_gguf_blocks(weight.data, weight.qtype, weight.shape)


def _as_float(part) -> torch.Tensor:
    return part if isinstance(part, torch.Tensor) else _decode(part).dequantize()


class GGUFConfig(QuantizationConfig):
    name = "gguf"

    def get_quant_method(self, layer, prefix):
        return GGUFLinearMethod()
