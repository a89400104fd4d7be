// Register-tiled float32 dot products shared by the dense GEMV and the quantized kernel's
// dequantize-then-multiply path.
#pragma once

#include <cstdint>

#include <algorithm>

#include "vec_math.h"

namespace {

// out[w * R + r] = <W row w, x row r>, K a multiple of 8 on the vector path.
template <int NW, int R>
inline void dots(const float* const* w, const float* x, int64_t K, float* out) {
  int64_t k = 0;
#ifdef PAGEDLLM_AVX2
  __m256 acc[NW][R];
  for (int i = 0; i < NW; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm256_setzero_ps();
  for (; k + 8 <= K; k += 8) {
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x + r * K + k);
    for (int i = 0; i < NW; ++i) {
      const __m256 wv = _mm256_loadu_ps(w[i] + k);
      for (int r = 0; r < R; ++r) acc[i][r] = _mm256_fmadd_ps(wv, xv[r], acc[i][r]);
    }
  }
  for (int i = 0; i < NW; ++i)
    for (int r = 0; r < R; ++r) out[i * R + r] = hsum8(acc[i][r]);
#else
  for (int i = 0; i < NW; ++i)
    for (int r = 0; r < R; ++r) out[i * R + r] = 0.f;
#endif
  for (; k < K; ++k)
    for (int i = 0; i < NW; ++i)
      for (int r = 0; r < R; ++r) out[i * R + r] += w[i][k] * x[r * K + k];
}

// out[m, n + i] = <w row i, x row m> for nw weight rows (contiguous, row length K) and all M
// rows of x (out row stride N): 4 weight rows x 2 activation rows per pass while they last.
inline void multiply_rows(const float* w, int64_t nw, const float* x, int64_t M, int64_t K,
                          float* out, int64_t N, int64_t n) {
  float part[8];
  for (int64_t i0 = 0; i0 < nw;) {
    const int64_t wn = nw - i0 >= 4 ? 4 : 1;
    const float* rows[4] = {w + i0 * K, w + std::min(i0 + 1, nw - 1) * K,
                            w + std::min(i0 + 2, nw - 1) * K, w + std::min(i0 + 3, nw - 1) * K};
    for (int64_t m0 = 0; m0 < M; m0 += 2) {
      const int64_t r = std::min<int64_t>(2, M - m0);
      if (wn == 4) {
        r == 2 ? dots<4, 2>(rows, x + m0 * K, K, part) : dots<4, 1>(rows, x + m0 * K, K, part);
      } else {
        r == 2 ? dots<1, 2>(rows, x + m0 * K, K, part) : dots<1, 1>(rows, x + m0 * K, K, part);
      }
      for (int64_t a = 0; a < wn; ++a)
        for (int64_t b = 0; b < r; ++b) out[(m0 + b) * N + n + i0 + a] = part[a * r + b];
    }
    i0 += wn;
  }
}

}  // namespace
