// The dense GEMV's register-tiled float32 dot products (dense_linear.cpp).
#pragma once

#include <cstdint>

#include "vec/vec.h"

namespace {

// out[w * R + r] = <W row w, x row r>: 8-lane FMA chains over K rounded down to 8, reduced by
// vec::reduce_add, then the last K % 8 columns one multiply and add at a time.
template <int NW, int R>
inline void dots(const float* const* w, const float* x, int64_t K, float* out) {
  namespace v = pagedllm::vec;
  v::F8 acc[NW][R];
  for (int i = 0; i < NW; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = v::zero();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    v::F8 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = v::load(x + r * K + k);
    for (int i = 0; i < NW; ++i) {
      const v::F8 wv = v::load(w[i] + k);
      for (int r = 0; r < R; ++r) acc[i][r] = v::fma(wv, xv[r], acc[i][r]);
    }
  }
  for (int i = 0; i < NW; ++i)
    for (int r = 0; r < R; ++r) out[i * R + r] = v::reduce_add(acc[i][r]);
  for (; k < K; ++k)
    for (int i = 0; i < NW; ++i)
      for (int r = 0; r < R; ++r) out[i * R + r] += w[i][k] * x[r * K + k];
}

}  // namespace
