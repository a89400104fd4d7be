// The quantized kernel's activation side: rows of x quantized per 32 columns to int16 with a
// float scale, and the per-group sums the group terms need (see quant_linear.cpp).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "block_terms.h"
#include "common.h"

namespace pagedllm::quant {
namespace {

// Activation rows quantized per 32 columns to int16 (or, opt-in, int8: see
// interleaved_int8.h) with a float scale dx, with per-group (G = 16 or 32 columns) terms,
// ng = K / G groups per row:
//   dx [M, ng]  the scale of the 32-column block holding the group
//   sx [M, ng]  the exact float sum of x over the group (the minimum's term)
//   ex [M, ng]  8 * (sum(x) - dx * sum(xq)) over the group (centring of u4 codes, see tile_dots)
struct QuantizedRows {
  int64_t K = 0, ng = 0, ngp = 0;  // ngp: row stride of dx/sx/ex, ng rounded up to 8 (zeros)
  std::vector<int16_t> q;          // [M, K]
  std::vector<float> dx, sx, ex;
  // each group's integer sum of q (the int8 path's i8 codes take it off, kquant.h's 6-bit loop
  // its code offset), and for int8 activations only, q's codes (|q| <= 127) as bytes
  std::vector<int32_t> xs;  // [M, ngp]
  std::vector<int8_t> q8;   // [M, K]
};

constexpr float kInt16Levels = 32767.f;
constexpr float kInt8Levels = 127.f;  // symmetric: -128 never occurs

// One 32-column block to int16 codes (round to nearest even, as std::nearbyint); returns the
// scale, sums[h] / isums[h] the float / integer sum of each 16-column half.
// levels: the largest code (kInt16Levels, or kInt8Levels for int8 activations).
inline float quantize_block(const float* x, int16_t* q, float sums[2], int32_t isums[2],
                            float levels = kInt16Levels) {
  vec::F8 vmax = vec::zero();
  for (int i = 0; i < kBlock; i += 8) vmax = vec::max(vmax, vec::abs(vec::load(x + i)));
  const float d = vec::reduce_max(vmax) / levels;
  const float id = d > 0.f ? 1.f / d : 0.f;
  const vec::F8 vid = vec::set1(id);
  for (int h = 0; h < 2; ++h) {
    const vec::F8 v0 = vec::load(x + 16 * h), v1 = vec::load(x + 16 * h + 8);
    const vec::I8x32 i0 = vec::round_i32(v0 * vid), i1 = vec::round_i32(v1 * vid);
    vec::store_i16(q + 16 * h, i0, i1);
    sums[h] = vec::reduce_add(v0 + v1);
    isums[h] = vec::reduce_add32(vec::add32(i0, i1));
  }
  return d;
}

// pair_blocks: the int16 codes of u4 blocks in the tile loop's pair order (kPairedBlocks), else
// in column order (the row-interleaved layout's, quant/interleaved.h).
// int8: codes of at most kInt8Levels, also as bytes in q8 with their group sums in xs (never
// paired: only the row-interleaved loop takes them).
// Into r, whose vectors keep what they held (activation_rows: a thread's reused rows); every
// entry the kernels read is written, the groups' padding to ngp zeroed.
template <bool U4, int G>
void quantize_activations_into(QuantizedRows& r, const float* x, int64_t M, int64_t K,
                               bool pair_blocks = kPairedBlocks<U4, G>, bool int8 = false) {
  const int64_t nb = K / kBlock;
  r.K = K;
  r.ng = K / G;
  r.ngp = (r.ng + 7) / 8 * 8;
  r.q.resize(M * K);
  r.dx.resize(M * r.ngp);
  r.sx.resize(M * r.ngp);
  r.ex.resize(M * r.ngp);
  r.xs.resize(M * r.ngp);
  for (int64_t m = 0; m < M && r.ngp > r.ng; ++m) {
    const int64_t pad = m * r.ngp + r.ng, n = r.ngp - r.ng;
    std::fill_n(r.dx.begin() + pad, n, 0.f);
    std::fill_n(r.sx.begin() + pad, n, 0.f);
    std::fill_n(r.ex.begin() + pad, n, 0.f);
    std::fill_n(r.xs.begin() + pad, n, 0);
  }
  if (int8) {
    pair_blocks = false;
    r.q8.resize(M * K);
  }
  const float levels = int8 ? kInt8Levels : kInt16Levels;
  at::parallel_for(0, M, 16, [&](int64_t m_begin, int64_t m_end) {
    for (int64_t m = m_begin; m < m_end; ++m) {
      for (int64_t b = 0; b < nb; ++b) {
        float sums[2];
        int32_t isums[2];
        int16_t* qb = r.q.data() + m * K + b * kBlock;
        alignas(32) int16_t natural[kBlock];
        const bool paired = pair_blocks && (b | 1) < nb;
        const float d =
            quantize_block(x + m * K + b * kBlock, paired ? natural : qb, sums, isums, levels);
        if (paired) {  // see kPairedBlocks
          int16_t* pair = r.q.data() + m * K + (b & ~int64_t{1}) * kBlock;
          store_paired(natural, pair, b & 1);
        }
        const int64_t first = m * r.ngp + b * kBlock / G;
        for (int h = 0; h < kBlock / G; ++h) {  // G 32: one group of both halves, 16: two
          const float s = G == 32 ? sums[0] + sums[1] : sums[h];
          const int32_t is = G == 32 ? isums[0] + isums[1] : isums[h];
          r.dx[first + h] = d;
          r.sx[first + h] = s;
          // (one rounding, as a SIMD build contracts it: the portable build then matches)
          r.ex[first + h] = 8.f * std::fma(-d, static_cast<float>(is), s);
          r.xs[first + h] = is;
        }
        if (int8) {
          for (int64_t i = 0; i < kBlock; ++i) r.q8[m * K + b * kBlock + i] = qb[i];
        }
      }
    }
  });
}

template <bool U4, int G>
QuantizedRows quantize_activations(const float* x, int64_t M, int64_t K,
                                   bool pair_blocks = kPairedBlocks<U4, G>, bool int8 = false) {
  QuantizedRows r;
  quantize_activations_into<U4, G>(r, x, M, K, pair_blocks, int8);
  return r;
}

// Calls of up to this many rows (decode) quantize into the calling thread's reused rows: at one
// row a SmolLM2 linear's five vectors were allocated and zeroed per call, and the kernels take a
// few microseconds each. Larger calls take `own` (freed with the call: a long prefill's rows,
// 2048 x 8192 int16 = 32 MiB, are not kept).
constexpr int64_t kReusedRows = 16;

// The rows a call of M rows quantizes into: the thread's reused ones or `own`. Not for a kernel
// that another on the same thread could enter while its rows are in use (none does: each
// quantizes, runs its loop over them and returns).
inline QuantizedRows& activation_rows(int64_t M, QuantizedRows& own) {
  thread_local QuantizedRows reused;
  return M <= kReusedRows ? reused : own;
}

}  // namespace
}  // namespace pagedllm::quant
