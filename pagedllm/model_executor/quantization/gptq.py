"""GPTQ checkpoints (config.json quantization_config quant_method "gptq"): 4-bit codes with a zero
point and a scale per group, the group of input row k being g_idx[k]:

    W^T[k, n] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]

qweight [K/8, N] int32 packed along the input dim, qzeros [G, N/8] int32 packed along the output
dim (int32_packing.py), scales [G, N], g_idx [K]. checkpoint_format "gptq" (AutoGPTQ's original
format) stores z - 1 in qzeros; "gptq_v2" stores z.

Act-order (desc_act) checkpoints have a non-monotonic g_idx: input rows are sorted by group at
load, so each group's rows are contiguous, and the same permutation gathers x's columns per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pagedllm.model_executor.quantization.awq import _as_dict
from pagedllm.model_executor.quantization.base import QuantizationConfig
from pagedllm.model_executor.quantization.group_quant import GroupQuant, concat_rows, to_kernel
from pagedllm.model_executor.quantization.int32_packing import unpack_nibbles
from pagedllm.model_executor.quantization.repacked import RepackedLinearMethod


class GPTQLinearMethod(RepackedLinearMethod):
    checkpoint_tensors = ("qweight", "qzeros", "scales", "g_idx")

    def __init__(self, zero_offset: int) -> None:
        self.zero_offset = zero_offset

    supports_tensor_parallel = True
    """Each shard arrives whole; the rank keeps its output columns (column-parallel) or its
    input rows with their g_idx (row-parallel) before the groups are ordered."""

    def repack(self, layer, shards):
        g_idx = shards["g_idx"][0].long()
        if any(not torch.equal(g.long(), g_idx) for g in shards["g_idx"][1:]):
            raise ValueError("GPTQ shards of a merged layer have different g_idx")
        unpacked = []
        for index, (qweight, qzeros, scales) in enumerate(zip(
                shards["qweight"], shards["qzeros"], shards["scales"])):
            codes = unpack_nibbles(qweight, dim=0)  # [K, N]
            zeros = unpack_nibbles(qzeros, dim=1).float() + self.zero_offset  # [G, N]
            if codes.shape[0] != g_idx.shape[0]:
                raise ValueError(f"GPTQ qweight {tuple(qweight.shape)} does not fit g_idx "
                                 f"{tuple(g_idx.shape)}")  # fmt: skip
            unpacked.append(_rank_columns(layer, codes, zeros, scales.float(), index))
        g_idx = _rank_rows(layer, g_idx)
        perm, group = _group_order(g_idx)
        parts = [self._decode(_rank_rows(layer, codes), zeros, scales, g_idx, perm, group)
                 for codes, zeros, scales in unpacked]  # fmt: skip
        return to_kernel(concat_rows(parts), input_perm=perm)

    def _decode(self, codes, zeros, scales, g_idx, perm, group) -> GroupQuant:
        """codes [K, N], zeros and scales [G, N] (by g_idx [K]) -> the GroupQuant."""
        if perm is not None:
            codes, g_idx = codes[perm], g_idx[perm]
        # one (scale, zero) per group of `group` consecutive (sorted) rows
        first_rows = g_idx[::group]
        s, z = scales[first_rows], zeros[first_rows]  # [K / group, N]
        return GroupQuant(codes.t().contiguous(), s.t().contiguous(),
                          (-z * s).t().contiguous(), group, unsigned4=True)  # fmt: skip


def _rank_columns(layer, codes, zeros, scales, index: int) -> tuple[torch.Tensor, ...]:
    """A column-parallel rank's output columns of shard `index` (tensors as [K or G, N])."""
    if layer.tp_size == 1 or layer.parallel_role != "column":
        return codes, zeros, scales
    return tuple(layer._rank_slice(t.t(), index).t() for t in (codes, zeros, scales))


def _rank_rows(layer, t: torch.Tensor) -> torch.Tensor:
    """A row-parallel rank's input rows of codes [K, N] or g_idx [K] (its groups keep their
    global ids: zeros and scales stay whole)."""
    if layer.tp_size == 1 or layer.parallel_role != "row":
        return t
    width = layer.input_size_per_partition
    return t.narrow(0, layer.tp_rank * width, width)


def _group_order(g_idx: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """(input permutation or None, rows per contiguous group) for a g_idx.

    Groups of unequal sizes fall back to one "group" per row (scales gathered per row)."""
    k = g_idx.shape[0]
    counts = torch.bincount(g_idx)
    counts = counts[counts > 0]
    group = int(counts[0]) if bool((counts == counts[0]).all()) else 1
    perm = None
    if bool((g_idx[1:] < g_idx[:-1]).any()):
        perm = torch.sort(g_idx, stable=True).indices
    if group > 1 and k % group:
        group = 1
    return perm, group


class GPTQConfig(QuantizationConfig):
    name = "gptq"

    def __init__(self, zero_offset: int = 1, modules_to_not_convert: Sequence[str] = ()) -> None:
        super().__init__(modules_to_not_convert)
        self.zero_offset = zero_offset

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> GPTQConfig:
        qc = _as_dict(hf_config.quantization_config)
        bits = qc.get("bits", 4)
        if bits != 4:
            raise ValueError(f"GPTQ with bits={bits} is not supported (supported: 4)")
        fmt = str(qc.get("checkpoint_format", "gptq")).lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise ValueError(f"GPTQ checkpoint_format {fmt!r} is not supported")
        # GPTQModel / optimum write the modules left float under the same key as AWQ.
        skipped = qc.get("modules_to_not_convert") or ()
        return cls(zero_offset=1 if fmt == "gptq" else 0, modules_to_not_convert=skipped)

    def get_quant_method(self, layer, prefix):
        return GPTQLinearMethod(self.zero_offset)
