"""--quantized-activation-dtype: what the compiled quantized linears (PackedGroupWeight)
quantize their activations to, set on every such weight of a loaded model, and the start-up
log line that says which and why.

int16 (default): ~2e-5 relative error; SmolLM2 Q4_1 then gives the dequantized float model's
greedy tokens. int8: u8 x s8 dot products (quant/interleaved_int8.h), twice the products per
AVX-512 VNNI instruction, at llama.cpp's and OpenVINO's precision (each activation rounded by
~5e-3 of its block's spread; SmolLM2 Q4_1's prompt logprobs move by up to ~0.24 nats, and greedy
tokens part from the float model's where two are nearly tied). Only the
row-interleaved layout (out_features % 16 == 0, almost every layer) runs int8; the rest stays
int16. Both are batch-invariant and give the same bits in every ISA build.
"""

from __future__ import annotations

from torch import nn

from pagedllm.logger import init_logger
from pagedllm.model_executor.quantization.kernels import PackedGroupWeight

logger = init_logger(__name__)

ACTIVATION_BITS = {"int16": 16, "int8": 8}


def set_quantized_activation_dtype(model: nn.Module, dtype: str) -> None:
    """Every PackedGroupWeight of `model` computes with `dtype` activations; logs the choice
    once (nothing for a model without one)."""
    bits = ACTIVATION_BITS[dtype]
    from pagedllm.model_executor.quantization.kquant_weight import KQuantWeight
    from pagedllm.model_executor.quantization.q5_weight import Q5Weight

    kinds = (PackedGroupWeight, KQuantWeight, Q5Weight)
    weights = [m for m in model.modules() if isinstance(m, kinds)]
    if not weights:
        return
    for weight in weights:
        weight.activation_bits = bits
    logger.info("quantized linears: %s activations (%s)", dtype, _why(dtype, weights))


def _why(dtype: str, weights: list[PackedGroupWeight]) -> str:
    if dtype == "int16":
        return ("the default: the float model's greedy tokens; --quantized-activation-dtype "
                "int8 trades that precision for batched speed")
    rest = sum(not w.row_interleaved for w in weights)
    vnni = _has_vnni()
    words = ("--quantized-activation-dtype int8: u8 x s8 dot products, "
             + ("AVX-512 VNNI dpbusd" if vnni else "no VNNI on this CPU, so smaller gains"))
    if rest:
        words += f"; {rest} of {len(weights)} matrices (out_features % 16 != 0) stay int16"
    return words


def _has_vnni() -> bool:
    import torch

    from pagedllm.kernels import kernel_isa

    return kernel_isa(torch.backends.cpu.get_cpu_capability()) == "AVX512_VNNI"
