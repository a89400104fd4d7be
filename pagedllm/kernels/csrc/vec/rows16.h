// 16 weight rows' lanes for builds without 512-bit registers (AVX2, portable): each R16 is two
// of the build's 8-lane types, rows 0-7 then 8-15, with the operations of vec_avx512.h's
// one-register R16i / R16f lane for lane. Written once on F8 / I8x32, so the AVX2 and portable
// builds share this code and, as for every vec_*.h function, its bits.
#pragma once

#include <cstdint>
#include <cstring>

namespace pagedllm::vec {

constexpr int kRows16Tile = 2;  // activation rows per tile: 3 x 2 x 2 of the 16 ymm registers
struct R16i {
  I8x32 h[2];
};
struct R16f {
  F8 h[2];
};

// 32 bytes to 32 int16 (lane l: bytes 2l, 2l + 1), zero- / sign-extended
inline R16i r16_widen_u8(const uint8_t* p) { return {{widen_u8_i16(p), widen_u8_i16(p + 16)}}; }
inline R16i r16_widen_i8(const uint8_t* p) { return {{widen_i8_i16(p), widen_i8_i16(p + 16)}}; }
inline R16i r16_low_nibbles(const R16i& a) { return {{nibble16<0>(a.h[0]), nibble16<0>(a.h[1])}}; }
// (bytes widened to int16: bits 4-7 are the value >> 4, no mask needed)
inline R16i r16_high_nibbles(const R16i& a) { return {{shr16(a.h[0], 4), shr16(a.h[1], 4)}}; }
// the sums in registers here, in the order written (vec_avx2.h's keep)
inline void r16_keep(R16i& a) {
  keep(a.h[0]);
  keep(a.h[1]);
}
// lane l: a's int16 pair of lane l times (x[0], x[1]), summed (exact: |sum| < 2^31)
inline R16i r16_dot(const R16i& a, const int16_t* x) {
  int32_t pair;
  std::memcpy(&pair, x, 4);
  const I8x32 b = set1_32(pair);
  return {{madd16(a.h[0], b), madd16(a.h[1], b)}};
}
inline R16i r16_dot_add(const R16i& acc, const R16i& a, const int16_t* x) {
  const R16i d = r16_dot(a, x);
  return {{add32(acc.h[0], d.h[0]), add32(acc.h[1], d.h[1])}};
}
// 32 int16 (as r16_widen_u8 leaves them) to and from memory
inline R16i r16_load_i16(const int16_t* p) { return {{load_i16(p), load_i16(p + 16)}}; }
inline void r16_store_i16(int16_t* p, const R16i& a) {
  std::memcpy(p, &a.h[0], 32);
  std::memcpy(p + 16, &a.h[1], 32);
}
inline R16f r16_to_float(const R16i& a) { return {{to_float(a.h[0]), to_float(a.h[1])}}; }
inline R16f r16_zero() { return {{zero(), zero()}}; }
inline R16f r16_set1(float x) { return {{set1(x), set1(x)}}; }
template <typename T>  // float or c10::Half (fp16 -> fp32 is exact)
inline R16f r16_load(const T* p) { return {{load(p), load(p + 8)}}; }
inline void r16_store(float* p, const R16f& a) {
  store(p, a.h[0]);
  store(p + 8, a.h[1]);
}
inline R16f operator+(const R16f& a, const R16f& b) { return {{a.h[0] + b.h[0], a.h[1] + b.h[1]}}; }
inline R16f operator*(const R16f& a, const R16f& b) { return {{a.h[0] * b.h[0], a.h[1] * b.h[1]}}; }
inline R16f fma(const R16f& a, const R16f& b, const R16f& c) {
  return {{fma(a.h[0], b.h[0], c.h[0]), fma(a.h[1], b.h[1], c.h[1])}};
}
// lanes 0-7 + lanes 8-15
inline F8 r16_fold(const R16f& a) { return a.h[0] + a.h[1]; }

}  // namespace pagedllm::vec
