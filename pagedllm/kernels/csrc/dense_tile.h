// Register-tiled float32 dot products shared by the dense GEMV and the quantized kernel's
// dequantize-then-multiply path.
#pragma once

#include <cstdint>

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

}  // namespace
