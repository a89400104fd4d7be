"""The quantized matmuls every weight-only method ends in, chosen by measurement.

Four weight layouts, each an nn.Module holding buffers only (never a float copy of the weight):

  Int8ChannelWeight   int8 [N, K] + one scale per output row   -> aten._weight_int8pack_mm
  Int4GroupWeight     4-bit codes packed by PyTorch's CPU int4 packer + (scale, zero) per
                      32..256-column group                 -> aten._weight_int4pack_mm_for_cpu
  SplitInt4Weight     5..8-bit codes with group scales as two 4-bit halves in one int4 matmul
  GroupedDequantWeight  int8 codes [N, K] + scale (+ zero) per column group, any group size:
                      dequantized per call, a chunk of rows at a time, into the activation dtype

Measured on this machine (AMD EPYC, AVX2, no AVX-512; torch 2.13 CPU; 1 thread; best of many
runs; microseconds for y = x W^T with K=576):

    N      M  activations   dense   int8pack  int8 dequant  int4pack  int8pack/int4pack
                                                                       via bf16 cast
    576    1  float32          31       311          71        639        34 / 54
    576    1  bfloat16         70        29         142         49
    576   32  float32         265     10079         307      20688       491 / 523
    576   32  bfloat16       2121       479        2207        509
    1536   1  float32          77       823         166       1708        78 / 131
    1536   1  bfloat16        181        73         357        126
    1536  32  float32         708     27032         806      55231      1316 / 1392
    1536  32  bfloat16       5707      1304        5921       1373
    49152  1  float32        7572     26617       74862      55057      4353 / 3950
    49152  1  bfloat16       5963      3916       43513       3957
    49152 32  float32       36627    865835      114063    1771669     53184 / 44899
    49152 32  bfloat16     183331     54721      216248      44413
    (float16 activations: as slow as float32 in both packed kernels.)

PyTorch's packed int8/int4 CPU kernels are fast only with bfloat16 activations (10-40x slower
with float32/float16 on AVX2). So both packed kernels always run in bfloat16: float32/float16
activations are cast to bfloat16 and the result cast back ("via bf16 cast" column: on par with
the dense float32 matmul at M=1 and 1.7-2x faster than it on the 49152-row LM head, while
reading 4-8x fewer weight bytes). Per-call dequantization is never the fastest with bf16; 5..8-bit
codes with group scales (GGUF Q5_*, Q8_0) therefore run as two 4-bit halves in one int4 matmul
(SplitInt4Weight), and per-call dequantization is kept for the layouts no packed kernel takes
(groups of 16 as in Q6_K, N not a multiple of 16); it computes in the activation dtype, so it is
exact in float32.

Tried and not adopted: two hand-written AVX2 kernels (torch cpp_extension) for 4-bit codes with
fp32 activations, (a) unpack + FMA in fp32: 150 us at N=1536, M=1 and (b) llama.cpp-style int8
activations + maddubs: 159 us; neither beat the int4 kernel via bf16 (131 us).

NOTE: the bf16 cast costs precision: results differ from the float32 reference by bf16
rounding (~0.4 % relative), and int4 scales/zeros are held in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model_executor.quantization.base import FusedWeightSpec

_PACKED_DTYPE = torch.bfloat16
INT4_GROUP_SIZES = (32, 64, 128, 256)
"""Group sizes _weight_int4pack_mm_for_cpu accepts."""
_DEQUANT_CHUNK_ELEMS = 1 << 22
"""Rows are dequantized in chunks of at most this many weights (bounds the temporary)."""


class QuantizedWeight(nn.Module):
    """y = x W^T for a weight W [out_features, in_features] held quantized.

    input_perm (GPTQ act-order): W's columns are stored permuted, x is gathered the same way.
    """

    def __init__(self, out_features: int, in_features: int, input_perm: torch.Tensor | None):
        super().__init__()
        self.out_features = out_features
        self.in_features = in_features
        self.register_buffer("input_perm", input_perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        if self.input_perm is not None:
            x = x.index_select(-1, self.input_perm)
        return self.matmul(x)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] in checkpoint column order (tests, debugging)."""
        w = self.dequantize_stored()
        if self.input_perm is None:
            return w
        return torch.empty_like(w).index_copy_(1, self.input_perm, w)

    def dequantize_stored(self) -> torch.Tensor:
        raise NotImplementedError

    def fused_weight_spec(self) -> FusedWeightSpec | None:
        """This layout as the fused CPU kernels take it, or None (QuantizeMethodBase's)."""
        return None

    def extra_repr(self) -> str:
        return f"out={self.out_features}, in={self.in_features}"


def _via_bf16(kernel, x: torch.Tensor, *args) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).to(_PACKED_DTYPE)
    return kernel(flat, *args).to(x.dtype).reshape(*x.shape[:-1], -1)


_INT8PACK_K_MULTIPLE = 16
"""aten._weight_int8pack_mm reads K in steps of 16: other K give garbage or a segfault (seen
with K = 24, 40, 100), so such weights are stored zero-padded to the next multiple."""


class Int8ChannelWeight(QuantizedWeight):
    """W[n, k] = codes[n, k] * scales[n] (symmetric, one scale per output row)."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, input_perm=None) -> None:
        super().__init__(codes.shape[0], codes.shape[1], input_perm)
        self.k_padding = -codes.shape[1] % _INT8PACK_K_MULTIPLE
        """Zero columns appended to the codes (and to x) so the kernel's K is a multiple of 16:
        they add exactly nothing to the products."""
        codes = torch.nn.functional.pad(codes.to(torch.int8), (0, self.k_padding))
        self.register_buffer("codes", codes.contiguous())  # [N, K + k_padding]
        self.register_buffer("scales", scales.to(_PACKED_DTYPE).contiguous())  # [N]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.k_padding:
            x = torch.nn.functional.pad(x, (0, self.k_padding))
        return _via_bf16(torch.ops.aten._weight_int8pack_mm, x, self.codes, self.scales)

    def dequantize_stored(self) -> torch.Tensor:
        w = self.codes.float() * self.scales.float()[:, None]
        return w[:, : self.in_features]


class Int4GroupWeight(QuantizedWeight):
    """W[n, k] = (codes[n, k] - 8) * scale[g, n] + zero[g, n], g = k // group_size, codes 0..15.

    (PyTorch's "tinygemm" convention: `zero` is the value of the middle code 8.)
    """

    def __init__(
        self,
        codes: torch.Tensor,  # [N, K] integer 0..15
        scales: torch.Tensor,  # [N, K // group_size]
        zeros: torch.Tensor,  # [N, K // group_size], tinygemm convention
        group_size: int,
        input_perm=None,
    ) -> None:
        super().__init__(codes.shape[0], codes.shape[1], input_perm)
        assert can_pack_int4(codes.shape[0], codes.shape[1], group_size)
        self.group_size = group_size
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 2)
        self.register_buffer("packed", packed)  # [N, K / 2] uint8, PyTorch's layout
        sz = torch.stack([scales.t(), zeros.t()], dim=-1)  # [K // group_size, N, 2]
        self.register_buffer("scales_and_zeros", sz.to(_PACKED_DTYPE).contiguous())

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return _via_bf16(
            torch.ops.aten._weight_int4pack_mm_for_cpu, x, self.packed, self.group_size,
            self.scales_and_zeros,
        )  # fmt: skip

    def dequantize_stored(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=_PACKED_DTYPE)
        w_t = torch.ops.aten._weight_int4pack_mm_for_cpu(
            eye, self.packed, self.group_size, self.scales_and_zeros
        )  # [K, N] = I W^T
        return w_t.float().t().contiguous()


class SplitInt4Weight(QuantizedWeight):
    """5..8-bit codes c (-128..127) as two 4-bit halves, c = 16 hi + lo, in ONE int4 matmul over
    the input fed twice:  y = [x | x] [W_hi | W_lo]^T,  W = W_hi + W_lo,

        W_hi[n, k] = 16 s hi  = (hi + 8 - 8) * 16 s            (tinygemm: scale 16 s, zero 0)
        W_lo[n, k] = s lo + z = (lo - 8) * s + (z + 8 s)       (tinygemm: scale s, zero z + 8 s)

    Same bytes as int8 codes; at M=1 1.5x (fp32) to 3.6x (bf16) faster than per-call
    dequantization (Gemma 3 shapes, 1 thread: 304 vs 452 us fp32, 296 vs 1077 us bf16 for
    N=1536, K=640), but 2x slower at M=32 with fp32 activations (3150 vs 1489 us).
    """

    def __init__(self, codes, scales, zeros, group_size: int, input_perm=None) -> None:
        super().__init__(codes.shape[0], codes.shape[1], input_perm)
        c = codes.to(torch.int32)
        hi, lo = c >> 4, c & 15
        doubled = torch.cat([hi + 8, lo], dim=1)  # [N, 2K]
        self.inner = Int4GroupWeight(
            doubled, torch.cat([16 * scales, scales], dim=1),
            torch.cat([torch.zeros_like(zeros), zeros + 8 * scales], dim=1), group_size,
        )  # fmt: skip

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.matmul(torch.cat([x, x], dim=-1))

    def dequantize_stored(self) -> torch.Tensor:
        both = self.inner.dequantize_stored()
        return both[:, : self.in_features] + both[:, self.in_features :]


def can_pack_int4(out_features: int, in_features: int, group_size: int) -> bool:
    return (
        group_size in INT4_GROUP_SIZES
        and in_features % group_size == 0
        and out_features % 16 == 0
    )


class GroupedDequantWeight(QuantizedWeight):
    """W[n, k] = codes[n, k] * scales[n, g] (+ zeros[n, g]), g = k // group_size; any codes that
    fit int8. Computed by dequantizing row chunks into the activation dtype on every call."""

    def __init__(
        self,
        codes: torch.Tensor,  # [N, K] int8-representable
        scales: torch.Tensor,  # [N, K // group_size]
        zeros: torch.Tensor | None,  # [N, K // group_size]
        group_size: int,
        input_perm=None,
    ) -> None:
        super().__init__(codes.shape[0], codes.shape[1], input_perm)
        self.group_size = group_size
        self.register_buffer("codes", codes.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.float().contiguous())
        self.register_buffer("zeros", None if zeros is None else zeros.float().contiguous())
        self.rows_per_chunk = max(1, _DEQUANT_CHUNK_ELEMS // self.in_features)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        n = self.out_features
        if n <= self.rows_per_chunk:
            return F.linear(x, self._rows(0, n, x.dtype))
        parts = [
            F.linear(x, self._rows(start, min(start + self.rows_per_chunk, n), x.dtype))
            for start in range(0, n, self.rows_per_chunk)
        ]
        return torch.cat(parts, dim=-1)

    def _rows(self, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        groups = self.in_features // self.group_size
        codes = self.codes[start:end].view(end - start, groups, self.group_size).to(dtype)
        w = codes * self.scales[start:end, :, None].to(dtype)
        if self.zeros is not None:
            w += self.zeros[start:end, :, None].to(dtype)
        return w.view(end - start, self.in_features)

    def dequantize_stored(self) -> torch.Tensor:
        return self._rows(0, self.out_features, torch.float32)


class PackedGroupWeight(QuantizedWeight):
    """pagedllm's compiled kernel (kernels/csrc/quant_linear.cpp), a scale and min per group of
    16 or 32 columns (float16 where exact, else float32):  W[n, k] = scales[n, g] * code[n, k] +
    mins[n, g].

    u4: codes 0..15, two per byte (ggml's Q4 order within each 32 columns); else int8 codes.
    Where out_features is a multiple of 16 (almost every layer) the weight is held row-interleaved
    (`interleave_rows`), the layout of the kernel's faster loop (quant/interleaved.h).
    Every row count runs the same arithmetic: activations quantized per 32 columns to int16
    (~2e-5 relative error) and integer dot products, so a row's result does not depend on how
    many rows share the call (batch invariance: greedy output is the same cold, cached, chunked
    and batched). int16 rather than llama.cpp's int8 activations: int8 changed SmolLM2 Q4_1's
    first greedy token on 2 of 10 prompts against the dequantized float model ("What is the
    capital of France?" answered "L'Étoile, la Marseillaise" instead of "... Paris."), int16
    agreed on all 48 tokens of all 10. See the module notes of quant_linear.cpp for speed.

    activation_bits 8 (opt-in, --quantized-activation-dtype int8; set after loading by
    activation_dtype.py): the row-interleaved loop quantizes x to int8 instead (u8 x s8 dot
    products, quant/interleaved_int8.h), still batch-invariant and the same bits in every build.
    """

    activation_bits: int = 16
    """16 or 8: what the kernel quantizes activations to (a plain attribute: not in state)."""

    def __init__(self, codes, scales, mins, group_size: int, u4: bool, input_perm=None) -> None:
        out_features = codes.shape[0]
        in_features = codes.shape[1] * (2 if u4 else 1)
        super().__init__(out_features, in_features, input_perm)
        self.group_size = group_size
        self.u4 = u4
        scales, mins = _compact_scales(scales.float(), mins.float())
        if out_features % ROW_GROUP == 0:
            codes, scales, mins = interleave_rows(codes, scales, mins, group_size, u4)
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("mins", mins.contiguous())

    @classmethod
    def from_codes(cls, codes, scales, zeros, group_size: int, u4: bool, input_perm=None):
        """codes [N, K] (0..15 if u4, else int8-representable), zeros the value of code 0."""
        n, k = codes.shape
        mins = zeros if zeros is not None else torch.zeros_like(scales)
        if u4:
            c = codes.to(torch.uint8).view(n, k // 32, 2, 16)
            packed = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(n, k // 2)
        else:
            packed = codes.to(torch.int8)
        return cls(packed, scales, mins, group_size, u4, input_perm)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = torch.ops.pagedllm.quant_linear(flat, self.codes, self.scales, self.mins,
                                            self.group_size, self.u4, self.activation_bits)
        return y.reshape(*x.shape[:-1], self.out_features)

    def gather_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of W in float32 (embedding lookups)."""
        return torch.ops.pagedllm.quant_gather_rows(ids.reshape(-1), self.codes, self.scales,
                                                    self.mins, self.group_size, self.u4,
                                                    self.in_features).reshape(
            *ids.shape, self.in_features)  # fmt: skip

    def dequantize_stored(self) -> torch.Tensor:
        ids = torch.arange(self.out_features, device=self.codes.device)
        return self.gather_rows(ids)

    def fused_weight_spec(self) -> FusedWeightSpec | None:
        if self.input_perm is not None:  # (the fused stack does not gather x's columns)
            return None
        tensors = {"codes": self.codes, "scales": self.scales, "mins": self.mins}
        return FusedWeightSpec("packed_group", tensors, self.group_size, self.u4,
                               self.activation_bits)

    @property
    def row_interleaved(self) -> bool:
        """Held in the row-interleaved layout (the loop int8 activations apply to)."""
        return self.codes.dim() == 3

    def extra_repr(self) -> str:
        kind = "u4" if self.u4 else "i8"
        return f"{super().extra_repr()}, {kind}, group={self.group_size}"


ROW_GROUP = 16
"""Weight rows the row-interleaved layout puts side by side (one vector's lanes)."""


def interleave_rows(
    codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int, u4: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The row-interleaved layout of kernels/csrc/quant/interleaved.h from the natural one
    (codes [N, K / 2] u4 in ggml's order or [N, K] i8; scales, mins [N, K / G]):

      codes  [N / 16, K / G, 16 * G / 2 (u4) or 16 * G (i8)]: per 16 rows and group, 32-byte
             chunks c of 16 rows x a column pair, byte 2 * row + t holding column 4c + t (low
             nibble) and 4c + 2 + t (high nibble) for u4, column 2c + t for i8
      scales, mins  [N / 16, K / G, 16]
    """
    n, g = codes.shape[0], group_size
    groups = scales.shape[1]
    if u4:
        blocks = codes.view(n, -1, 16)  # byte j of a 32-column block: columns j and j + 16
        unpacked = torch.stack((blocks & 0x0F, blocks >> 4), dim=2).reshape(n, -1)
        # column g * G + 4c + 2h + t of row (16 j + l) -> [j, g, c, l, t, h]
        v = unpacked.view(n // ROW_GROUP, ROW_GROUP, groups, g // 4, 2, 2).permute(0, 2, 3, 1, 5, 4)
        packed = (v[..., 0] | (v[..., 1] << 4)).reshape(n // ROW_GROUP, groups, ROW_GROUP * g // 2)
    else:  # column g * G + 2c + t of row (16 j + l) -> [j, g, c, l, t]
        v = codes.view(n // ROW_GROUP, ROW_GROUP, groups, g // 2, 2).permute(0, 2, 3, 1, 4)
        packed = v.reshape(n // ROW_GROUP, groups, ROW_GROUP * g)

    def by_row_group(t: torch.Tensor) -> torch.Tensor:
        return t.view(n // ROW_GROUP, ROW_GROUP, groups).transpose(1, 2).contiguous()

    return packed.contiguous(), by_row_group(scales), by_row_group(mins)


def _compact_scales(scales: torch.Tensor, mins: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Both in float16 when that holds every value exactly (GGUF's scales are fp16; the kernel
    reads 20 instead of 24 bytes per 32 4-bit weights), else both float32."""
    half = scales.half(), mins.half()
    exact = all(torch.equal(h.float(), f) for h, f in zip(half, (scales, mins)))
    return half if exact else (scales, mins)


class DenseWeight(QuantizedWeight):
    """A float weight (a GGUF layer stored in F32/F16/BF16) in the model dtype."""

    def __init__(self, weight: torch.Tensor, input_perm=None) -> None:
        super().__init__(weight.shape[0], weight.shape[1], input_perm)
        self.register_buffer("weight", weight.to(torch.get_default_dtype()).contiguous())

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def dequantize_stored(self) -> torch.Tensor:
        return self.weight.float()
