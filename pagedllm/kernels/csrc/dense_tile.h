// Register-tiled float32 dot products shared by the dense GEMV and the quantized kernel's
// dequantize-then-multiply path.
#pragma once

#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#ifndef PAGEDLLM_AVX2
#define PAGEDLLM_AVX2 1
#endif
#endif

namespace {


#ifdef PAGEDLLM_AVX2
inline float hsum8(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
#endif

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
