// Weight-only quantized linear layers for CPUs: y[M, N] = x[M, K] W[N, K]^T with W held as
// integer codes + a scale and minimum (float16 where exact, else float32) per group of 16 or
// 32 input columns:
//
//     W[n, k] = scale[n, k / G] * code[n, k] + min[n, k / G]
//
// Two code layouts (every GGUF type, AWQ/GPTQ, int8/int4 at load is repacked into one of them):
//   u4: codes 0..15, 16 bytes per 32 columns; byte j holds column j (low nibble) and column
//       j + 16 (high nibble) — ggml's Q4_0/Q4_1 order, so those blocks repack byte for byte.
//   i8: codes -128..127, one byte per column.
//
// One numerical treatment for every row count (batch invariance: a token's result does not
// depend on how many rows share its call, so greedy output is the same cold, cached, chunked
// or batched). x is quantized per 32 columns to int16 with a float scale, each group is an
// exact integer dot product (AVX-512 VNNI dpwssd / AVX2 madd), scaled once per group; the min
// term uses the exact float sum of x over the group. int16 activations are ~250x more precise
// than llama.cpp's int8 (relative error ~2e-5): SmolLM2 Q4_1 then gives the dequantized float
// model's greedy tokens (48 of 48 on 10 prompts, where int8 activations parted on the first
// token of two). Every (weight row, activation row) sum is formed by the same operations in the
// same order whatever the tile it falls in (tile_dots), and integer sums are exact in any order.
// Against the int8-then-dequantized-GEMM kernel this replaced (SmolLM2's 120 Q4_1 matrices,
// 2 threads, AMD Zen 5, ms, best of 5): AVX-512 build 1 / 4 / 32 / 256 rows 2.8 / 4.3 / 28 / 215
// against 3.0 / 5.6 / 31 / 275-338; AVX2 build 3.0 / 5.9 / 41 / 330 against 3.1 / 4.6 / 29 / 290
// (four int16 multiply-adds per 64 products where int8 took two: the precision's price there).
//
// Two loops over the same arithmetic, chosen by the weight's layout (fixed at load, so a matrix
// always takes the same one):
//   row-interleaved (quant/interleaved.h): codes [N / 16, K / G, ...] with 16 weight rows in a
//       vector's lanes and the activations broadcast; every matrix with N % 16 == 0. SmolLM2's
//       shapes, 2 threads, Zen 5 (AVX-512 VNNI): 1.5-2x the tile loop at 1 row, 2.3-2.9x at
//       16-64 rows (~340 GMAC/s, the int16 multiply-add rate's ~75%).
//   tiles (quant/tile_dots.h + quant/block_terms_*.h): codes [N, K / 2 or K], weight rows in
//       the lanes' column order, 4 x 4 tiles; the N % 16 != 0 rest.
//   On AVX2 and portable builds, u4 codes with int16 activations over 24+ rows widen each row
//   group's nibbles to int16 once per ~16 KB block of them (quant/interleaved.h's widened path)
//   and run 4-row tiles on them: 1.2x at 64 and 512 rows on a Zen 3 core, the same bits.
// int8 activations (opt-in, `activation_bits` 8: --quantized-activation-dtype int8): the
// row-interleaved loop with x quantized to -127..127 per 32 columns and u8 x s8 dot products
// (VNNI dpbusd: twice dpwssd's products per instruction), quant/interleaved_int8.h; the same
// bits in every build and batch-invariant as the int16 path. The tile loop (N % 16 != 0 rest)
// keeps int16 activations.
// The kernel's parts: quant/activations.h (x to int16 per block), the two loops above,
// quant/dequantize.h (rows back to float); this file checks shapes and registers the ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "ops.h"
#include "quant/dequantize.h"
#include "quant/interleaved.h"
#include "quant/op_checks.h"
#include "quant/tile_dots.h"

namespace {

using pagedllm::quant::check_activation_bits;
using pagedllm::quant::dequantize_interleaved_rows;
using pagedllm::quant::dequantize_rows;
using pagedllm::quant::float_rows;
using pagedllm::quant::out_rows;
using pagedllm::quant::gather_rows;
using pagedllm::quant::gemv_rows;
using pagedllm::quant::interleaved_rows;
using pagedllm::quant::kRowGroup;
static_assert(pagedllm::kQuantRowGroup == kRowGroup, "ops.h's row group is interleaved.h's");

template <bool U4, int G, typename S>
at::Tensor run(const at::Tensor& x_in, const at::Tensor& codes, const at::Tensor& scales,
               const at::Tensor& mins, bool int8, const at::Tensor& into) {
  const at::Tensor x = float_rows(x_in);
  const int64_t M = x.size(0), K = x.size(1);
  const bool interleaved = codes.dim() == 3;
  const int64_t N = interleaved ? codes.size(0) * kRowGroup : codes.size(0);
  if (interleaved) {  // [N / 16, K / G, 16 * bytes per row and group]
    TORCH_CHECK(codes.size(1) == K / G && codes.size(2) == kRowGroup * (U4 ? G / 2 : G),
                "row-interleaved codes do not match in_features");
    TORCH_CHECK(scales.dim() == 3 && scales.size(0) == codes.size(0) &&
                scales.size(1) == K / G && scales.size(2) == kRowGroup &&
                mins.sizes() == scales.sizes(), "row-interleaved scales of the wrong shape");
  } else {
    TORCH_CHECK(codes.size(1) == (U4 ? K / 2 : K), "codes do not match in_features");
    TORCH_CHECK(scales.size(0) == N && scales.size(1) == K / G && mins.sizes() == scales.sizes());
  }
  at::Tensor out = out_rows(into, M, N, x);
  if (M > 0 && interleaved && int8) {
    interleaved_rows<U4, G, S, true>(x, codes, scales, mins, out);
  } else if (M > 0 && interleaved) {
    interleaved_rows<U4, G, S, false>(x, codes, scales, mins, out);
  } else if (M > 0) {
    gemv_rows<U4, G, S>(x, codes, scales, mins, out);
  }
  return out;
}

template <typename S>
at::Tensor dispatch_layout(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                           const at::Tensor& mins, int64_t group_size, bool u4, bool int8,
                           const at::Tensor& into) {
  if (u4) {
    return group_size == 32 ? run<true, 32, S>(x, codes, scales, mins, int8, into)
                            : run<true, 16, S>(x, codes, scales, mins, int8, into);
  }
  return group_size == 32 ? run<false, 32, S>(x, codes, scales, mins, int8, into)
                          : run<false, 16, S>(x, codes, scales, mins, int8, into);
}

template <typename S>
void gather_row(const uint8_t* cp, const at::Tensor& scales, const at::Tensor& mins,
                int64_t group_size, bool u4, int64_t K, int64_t n, float* dst) {
  const S* sp = scales.data_ptr<S>();
  const S* mp = mins.data_ptr<S>();
  if (scales.dim() == 3) {  // row-interleaved
    if (u4) {
      group_size == 32 ? dequantize_interleaved_rows<true, 32, S>(cp, sp, mp, K, n, n + 1, dst)
                       : dequantize_interleaved_rows<true, 16, S>(cp, sp, mp, K, n, n + 1, dst);
    } else {
      group_size == 32 ? dequantize_interleaved_rows<false, 32, S>(cp, sp, mp, K, n, n + 1, dst)
                       : dequantize_interleaved_rows<false, 16, S>(cp, sp, mp, K, n, n + 1, dst);
    }
    return;
  }
  if (u4) {
    group_size == 32 ? dequantize_rows<true, 32, S>(cp, sp, mp, K, n, n + 1, dst)
                     : dequantize_rows<true, 16, S>(cp, sp, mp, K, n, n + 1, dst);
  } else {
    group_size == 32 ? dequantize_rows<false, 32, S>(cp, sp, mp, K, n, n + 1, dst)
                     : dequantize_rows<false, 16, S>(cp, sp, mp, K, n, n + 1, dst);
  }
}

}  // namespace

namespace pagedllm {

namespace {

at::Tensor quant_linear_rows(const at::Tensor& x, const at::Tensor& codes,
                             const at::Tensor& scales, const at::Tensor& mins, int64_t group_size,
                             bool u4, int64_t activation_bits, const at::Tensor& into) {
  TORCH_CHECK(group_size == 16 || group_size == 32, "group size must be 16 or 32");
  check_activation_bits(activation_bits);
  const bool int8 = activation_bits == 8;
  TORCH_CHECK(codes.is_contiguous() && scales.is_contiguous() && mins.is_contiguous());
  TORCH_CHECK(scales.scalar_type() == mins.scalar_type(), "scales and mins of one dtype");
  if (scales.scalar_type() == at::kHalf) {
    return dispatch_layout<at::Half>(x, codes, scales, mins, group_size, u4, int8, into);
  }
  TORCH_CHECK(scales.scalar_type() == at::kFloat, "scales must be float32 or float16");
  return dispatch_layout<float>(x, codes, scales, mins, group_size, u4, int8, into);
}

}  // namespace

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                        const at::Tensor& mins, int64_t group_size, bool u4,
                        int64_t activation_bits) {
  return quant_linear_rows(x, codes, scales, mins, group_size, u4, activation_bits, at::Tensor())
      .to(x.scalar_type());
}

void quant_linear_into(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                       const at::Tensor& mins, int64_t group_size, bool u4,
                       int64_t activation_bits, const at::Tensor& out) {
  TORCH_CHECK(out.defined(), "quant_linear_into: no out rows");
  quant_linear_rows(x, codes, scales, mins, group_size, u4, activation_bits, out);
}

// Rows `ids` of W as float [len(ids), K] (embedding lookups from a quantized table).
at::Tensor quant_gather_rows(const at::Tensor& ids, const at::Tensor& codes,
                             const at::Tensor& scales, const at::Tensor& mins,
                             int64_t group_size, bool u4, int64_t in_features) {
  const int64_t N = codes.size(0) * (codes.dim() == 3 ? kRowGroup : 1);
  const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  return gather_rows(ids, N, in_features, [&](int64_t n, float* dst) {
    if (scales.scalar_type() == at::kHalf) {
      gather_row<at::Half>(cp, scales, mins, group_size, u4, in_features, n, dst);
    } else {
      gather_row<float>(cp, scales, mins, group_size, u4, in_features, n, dst);
    }
  });
}

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("quant_linear(Tensor x, Tensor codes, Tensor scales, Tensor mins, int group_size, "
        "bool u4, int activation_bits=16) -> Tensor");
  m.def("quant_gather_rows(Tensor ids, Tensor codes, Tensor scales, Tensor mins, "
        "int group_size, bool u4, int in_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("quant_linear", &pagedllm::quant_linear);
  m.impl("quant_gather_rows", &pagedllm::quant_gather_rows);
}
