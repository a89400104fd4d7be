// --kv-cache-dtype int8's row encoding (attention/ops/kv_quant.py): D int8 values, then the
// float32 scale's 4 bytes, scale = max |x| / 127 (at least 1e-12), q = round(x / scale) clamped
// to [-127, 127], rounded half to even. The same bits as quantize_kv's PyTorch ops (a division
// and a round are exact IEEE operations, and a max does not depend on the order), in every build.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace pagedllm {

inline void quantize_row_int8(const float* x, int64_t d, int8_t* out) {
  float amax = 0.f;
  for (int64_t i = 0; i < d; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = std::max(amax / 127.f, 1e-12f);
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) {
    const float v = std::nearbyint(x[i] / scale);  // (the default mode: half to even)
    out[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, v)));
  }
  std::memcpy(out + d, &scale, sizeof(float));
}

}  // namespace pagedllm
