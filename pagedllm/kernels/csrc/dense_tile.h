// The dense GEMV's register-tiled float32 dot products (dense_linear.cpp).
#pragma once

#include <cmath>
#include <cstdint>

#include "vec/vec.h"

namespace {

// out[w * R + r] = <W row w, x row r>: 8-lane FMA chains over K rounded down to 8, reduced by
// vec::reduce_add, then the last K % 8 columns one fused multiply-add at a time. W's rows are
// float32, or bfloat16 / float16 widened exactly as they are loaded: the same sums, bit for bit,
// as float32 rows holding the same values, from half the bytes.
template <int NW, int R, typename W>
inline void dots(const W* const* w, const float* x, int64_t K, float* out) {
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
      for (int r = 0; r < R; ++r)  // (fused explicitly: the same rounding in every build and
        out[i * R + r] = std::fma(v::to_f32(w[i][k]), x[r * K + k], out[i * R + r]);  // dtype)
}

}  // namespace
