// The dense GEMM of the AVX-512 builds (dense_linear.cpp, more than 4 activation rows): two
// activation rows per 512-bit register, so each FMA does 16 multiply-adds where dense_tile.h's
// does 8, in dense_tile.h's order exactly.
//
// dense_tile.h sums each output <W row n, x row r> as 8 FMA chains (lane j: columns k = j mod 8,
// in order), reduced by vec::reduce_add, then the last K % 8 columns one FMA at a time. Here
// register half 0 holds the chains of x row 2p, half 1 those of row 2p + 1, against W row n's 8
// columns broadcast to both halves: lane for lane the same FMAs on the same values, each half
// reduced by the same reduce_add, the same tail. So every output is dense_tile.h's bits (the
// 1-4 row GEMV's, the AVX2 and portable builds'), whatever rows share its register.
//
// The activations are repacked per call into pairs ([pair][K / 8][16]: 8 columns of row 2p then
// of 2p + 1; an odd last row pairs with zeros, whose outputs are dropped), so one aligned load
// gives a register; W is read in place (no copy of the weights: the tied embedding, LoRA and
// TP slices share its layout). bfloat16 / float16 rows are widened to a float32 scratch panel
// once per row block, then swept like float32 ones.
#pragma once

#include "vec/vec.h"  // (defines PAGEDLLM_VEC_512 in the AVX-512 builds)

#ifdef PAGEDLLM_VEC_512

#include <immintrin.h>

#include <cstdint>

namespace {

// W rows x activation pairs per register tile: 4 x 3 (12 accumulators, 6 activation rows).
// Measured in L1 on this Zen 5 (1 thread, K 576 / 1536, GMAC/s): 4 x 3 108-117, 6 x 2 107-109,
// 3 x 4 96-105, 4 x 2 98-105; 4 x 4, 5 x 3, 6 x 4, 2 x 6 only 43-46 (cause not found: not the
// registers zmm16-31, not spills; the loop is clean); dense_tile.h's 4 x 3 ymm tile 63-66.
constexpr int kPanelRows = 4;
constexpr int kTilePairs = 3;

// Pack x rows [m0, m0 + rows) into pairs: dst[(p * K8 + k8) * 16 + h * 8 + j] =
// x[m0 + 2p + h][8 k8 + j] (zeros past the last row). K8 = K / 8 blocks of 8 columns.
inline void pack_pairs(const float* x, int64_t K, int64_t m0, int64_t rows, float* dst) {
  const int64_t K8 = K / 8;
  for (int64_t p = 0; p < (rows + 1) / 2; ++p) {
    float* d = dst + p * K8 * 16;
    const float* lo = x + (m0 + 2 * p) * K;
    const bool has_hi = 2 * p + 1 < rows;
    const float* hi = lo + K;
    for (int64_t b = 0; b < K8; ++b) {
      _mm256_store_ps(d + b * 16, _mm256_loadu_ps(lo + b * 8));
      _mm256_store_ps(d + b * 16 + 8, has_hi ? _mm256_loadu_ps(hi + b * 8) : _mm256_setzero_ps());
    }
  }
}

// out[i * 2P + 2p + h] = <W row i, x row 2p + h> over the first 8 K8 columns, reduced; the K % 8
// tail is added by the caller (dense_tile.h's tail order).
template <int NW, int P>
inline void pair_dots(const float* const* w, const float* pairs, int64_t K8, float* out) {
  // (loops unrolled explicitly so the accumulators stay in registers whatever GCC's unrolling
  // limits)
  __m512 acc[NW][P];
#pragma GCC unroll 16
  for (int i = 0; i < NW; ++i)
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) acc[i][p] = _mm512_setzero_ps();
  for (int64_t b = 0; b < K8; ++b) {
    __m512 xv[P];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) xv[p] = _mm512_load_ps(pairs + (p * K8 + b) * 16);
#pragma GCC unroll 16
    for (int i = 0; i < NW; ++i) {
      const __m512 wv = _mm512_broadcast_f32x8(_mm256_loadu_ps(w[i] + b * 8));
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) acc[i][p] = _mm512_fmadd_ps(wv, xv[p], acc[i][p]);
    }
  }
  namespace v = pagedllm::vec;
  for (int i = 0; i < NW; ++i)
    for (int p = 0; p < P; ++p) {
      out[i * 2 * P + 2 * p] = v::reduce_add(v::F8{_mm512_castps512_ps256(acc[i][p])});
      out[i * 2 * P + 2 * p + 1] = v::reduce_add(v::F8{_mm512_extractf32x8_ps(acc[i][p], 1)});
    }
}

}  // namespace

#endif  // PAGEDLLM_VEC_512
