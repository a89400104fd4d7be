"""AWQ checkpoints (config.json quantization_config quant_method "awq", version "gemm"):
4-bit codes with a zero point and a scale per group of `group_size` input rows,

    W^T[k, n] = (q[k, n] - z[k // g, n]) * s[k // g, n]

qweight [K, N/8] / qzeros [K/g, N/8] int32 in AWQ's interleaved nibble order (int32_packing.py),
scales [K/g, N]. Repacked at load into the int4 kernel layout (or int8 codes + per-group
dequantization when the group layout does not fit it, see group_quant.to_kernel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pagedllm.model_executor.quantization.base import QuantizationConfig
from pagedllm.model_executor.quantization.group_quant import GroupQuant, concat_rows, to_kernel
from pagedllm.model_executor.quantization.int32_packing import undo_awq_order, unpack_nibbles
from pagedllm.model_executor.quantization.repacked import RepackedLinearMethod, rank_part


class AWQLinearMethod(RepackedLinearMethod):
    checkpoint_tensors = ("qweight", "qzeros", "scales")

    def __init__(self, group_size: int) -> None:
        self.group_size = group_size

    supports_tensor_parallel = True
    """Each shard arrives whole and is decoded, then cut to the rank's part (rank_part)."""

    def repack(self, layer, shards):
        parts = [
            rank_part(layer, self._decode(qweight, qzeros, scales, layer.input_size), index)
            for index, (qweight, qzeros, scales) in enumerate(zip(
                shards["qweight"], shards["qzeros"], shards["scales"]))
        ]  # fmt: skip
        return to_kernel(concat_rows(parts))

    def _decode(self, qweight, qzeros, scales, in_features: int) -> GroupQuant:
        group = self.group_size if self.group_size > 0 else in_features
        codes = undo_awq_order(unpack_nibbles(qweight, dim=1))  # [K, N]
        zeros = undo_awq_order(unpack_nibbles(qzeros, dim=1)).float()  # [K/g, N]
        scales = scales.float()  # [K/g, N]
        if codes.shape[0] != in_features or scales.shape[0] * group != in_features:
            raise ValueError(
                f"AWQ tensors of shapes {tuple(qweight.shape)}, {tuple(scales.shape)} do not fit "
                f"in_features={in_features}, group_size={group}"
            )
        return GroupQuant(codes.t().contiguous(), scales.t().contiguous(),
                          (-zeros * scales).t().contiguous(), group, unsigned4=True)  # fmt: skip


class AWQConfig(QuantizationConfig):
    name = "awq"

    def __init__(self, group_size: int = 128, modules_to_not_convert: Sequence[str] = ()) -> None:
        super().__init__(modules_to_not_convert)
        self.group_size = group_size

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> AWQConfig:
        qc = _as_dict(hf_config.quantization_config)
        bits = qc.get("bits", qc.get("w_bit", 4))
        version = str(qc.get("version", "gemm")).lower()
        if bits != 4 or version != "gemm" or not qc.get("zero_point", True):
            raise ValueError(
                f"AWQ with bits={bits}, version={version!r}, zero_point={qc.get('zero_point')} "
                "is not supported (supported: 4-bit GEMM layout with zero points)"
            )
        group_size = int(qc.get("group_size", qc.get("q_group_size", 128)))
        # AutoAWQ writes the modules it left float (e.g. ["gate"] for MoE routers, or a vision
        # tower) here; their float weights are in the checkpoint.
        return cls(group_size, qc.get("modules_to_not_convert") or ())

    def get_quant_method(self, layer, prefix):
        return AWQLinearMethod(self.group_size)


def _as_dict(qc: Any) -> dict[str, Any]:
    return qc if isinstance(qc, dict) else qc.to_dict()
