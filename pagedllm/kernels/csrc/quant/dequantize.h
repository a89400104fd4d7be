// Rows of a quantized weight back to float (embedding lookups from a quantized table).
#pragma once

#include <cstdint>

#include "common.h"

namespace pagedllm::quant {
namespace {

// Columns 8q .. 8q + 7 of a 32-column block's codes as int32 (q = 0..3). u4: 16 bytes per block,
// byte j holding column j (low nibble) and j + 16 (high nibble).
template <bool U4>
inline vec::I8x32 block_codes8(const uint8_t* block, int q) {
  if constexpr (U4) {
    const vec::I8x32 bytes = vec::widen_u8_i32(block + (q & 1) * 8);
    return q < 2 ? vec::and32(bytes, 0x0F) : vec::shr32(bytes, 4);
  } else {
    return vec::widen_i8_i32(block + q * 8);
  }
}

// Rows [n0, n1) of W dequantized to float into dst [n1 - n0, K]: scale * code + min, fused.
template <bool U4, int G, typename S>
void dequantize_rows(const uint8_t* codes, const S* scales, const S* mins, int64_t K,
                     int64_t n0, int64_t n1, float* dst) {
  const int64_t groups = K / G;
  const int64_t row_bytes = U4 ? K / 2 : K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* c = codes + n * row_bytes;
    const S* s = scales + n * groups;
    const S* z = mins + n * groups;
    float* d = dst + (n - n0) * K;
    for (int64_t b = 0; b < K / kBlock; ++b) {
      const uint8_t* block = c + b * (U4 ? 16 : kBlock);
      for (int q = 0; q < 4; ++q) {  // 8 columns at a time
        const int64_t g = (b * kBlock + q * 8) / G;
        const vec::F8 v = vec::fma(vec::to_float(block_codes8<U4>(block, q)),
                                   vec::set1(to_float(s[g])), vec::set1(to_float(z[g])));
        vec::store(d + b * kBlock + q * 8, v);
      }
    }
  }
}

}  // namespace
}  // namespace pagedllm::quant
