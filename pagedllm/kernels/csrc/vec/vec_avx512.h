// AVX-512 (F, BW, VL; VNNI where the build has it): vec_avx2.h's 256-bit types, which every
// kernel uses here too (the compiler's own vectorization stays at 256 bits, see
// kernels/__init__.py), plus the 512-bit types of the quantized kernel's loops
// (quant/block_terms_512.h, quant/interleaved.h), the loops that are faster at this width.
#pragma once

#include <cstring>

#include "vec_avx2.h"

namespace pagedllm::vec {

// 16 floats.
struct F16 {
  __m512 v;
};
// 512 bits of integers: 32 int16 or 16 int32 lanes.
struct I16x32 {
  __m512i v;
};

inline F16 zero16() { return {_mm512_setzero_ps()}; }
inline F16 set1_16(float x) { return {_mm512_set1_ps(x)}; }
// [p[0] x 8, p[1] x 8]
inline F16 load_two_halves16(const float* p) {
  const __m128 pair = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
  return {_mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                _mm512_castps128_ps512(pair))};
}
inline F16 fma(F16 a, F16 b, F16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline float reduce_add(F16 a) { return _mm512_reduce_add_ps(a.v); }

inline I16x32 load_i16x32(const int16_t* p) { return {_mm512_loadu_si512(p)}; }
// 32 bytes widened to 32 int16, zero- / sign-extended
inline I16x32 widen_u8_i16x32(const uint8_t* p) {
  return {_mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
}
inline I16x32 widen_i8_i16x32(const uint8_t* p) {
  return {_mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
}
// 16 bytes' low nibbles (int16 lanes 0-15), then their high nibbles (16-31)
inline I16x32 nibbles_i16x32(const uint8_t* p) {
  const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(w, 4), w);
  return {_mm512_cvtepu8_epi16(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)))};
}
// int16 lanes' low nibble; their value >> 4
inline I16x32 low_nibble16(I16x32 a) { return {_mm512_and_si512(a.v, _mm512_set1_epi16(0x000F))}; }
inline I16x32 shr4_16(I16x32 a) { return {_mm512_srli_epi16(a.v, 4)}; }
// acc + the 16 int32 pair sums of int16 products a * b (exact here: |sum| < 2^31)
inline I16x32 dot_add(I16x32 acc, I16x32 a, I16x32 b) {
#ifdef __AVX512VNNI__
  return {_mm512_dpwssd_epi32(acc.v, a.v, b.v)};
#else
  return {_mm512_add_epi32(acc.v, _mm512_madd_epi16(a.v, b.v))};
#endif
}
inline I16x32 dot(I16x32 a, I16x32 b) {
#ifdef __AVX512VNNI__
  return {_mm512_dpwssd_epi32(_mm512_setzero_si512(), a.v, b.v)};
#else
  return {_mm512_madd_epi16(a.v, b.v)};
#endif
}
inline F16 to_float(I16x32 a) { return {_mm512_cvtepi32_ps(a.v)}; }  // int32 lanes

// ---- 16 weight rows' lanes (quant/interleaved.h): one register each ----
// R16i: 16 int32 lanes (or the 32 int16 they hold in pairs), lane l = weight row l of a row
// group; R16f: 16 floats, the same rows. vec/rows16.h has the two-register form of other builds.
constexpr int kRows16Tile = 8;  // activation rows per row-group tile: 3 x 8 registers of sums
struct R16i {
  __m512i v;
};
struct R16f {
  __m512 v;
};
// 32 bytes to 32 int16 (lane l: bytes 2l, 2l + 1), zero- / sign-extended
inline R16i r16_widen_u8(const uint8_t* p) { return {widen_u8_i16x32(p).v}; }
inline R16i r16_widen_i8(const uint8_t* p) { return {widen_i8_i16x32(p).v}; }
inline R16i r16_low_nibbles(R16i a) { return {_mm512_and_si512(a.v, _mm512_set1_epi16(0x0F))}; }
inline R16i r16_high_nibbles(R16i a) { return {_mm512_srli_epi16(a.v, 4)}; }  // bytes: >> 4
inline void r16_keep(R16i&) {}  // (rows16.h's register hint for the AVX2 build; not needed here)
// lane l: a's int16 pair of lane l times (x[0], x[1]), summed (exact: |sum| < 2^31)
inline R16i r16_dot(R16i a, const int16_t* x) {
  int32_t pair;
  std::memcpy(&pair, x, 4);
#ifdef __AVX512VNNI__
  return {_mm512_dpwssd_epi32(_mm512_setzero_si512(), a.v, _mm512_set1_epi32(pair))};
#else
  return {_mm512_madd_epi16(a.v, _mm512_set1_epi32(pair))};
#endif
}
inline R16i r16_dot_add(R16i acc, R16i a, const int16_t* x) {
  int32_t pair;
  std::memcpy(&pair, x, 4);
#ifdef __AVX512VNNI__
  return {_mm512_dpwssd_epi32(acc.v, a.v, _mm512_set1_epi32(pair))};
#else
  return {_mm512_add_epi32(acc.v, _mm512_madd_epi16(a.v, _mm512_set1_epi32(pair)))};
#endif
}
// 32 int16 (as r16_widen_u8 leaves them) to and from memory
inline R16i r16_load_i16(const int16_t* p) { return {_mm512_loadu_si512(p)}; }
inline void r16_store_i16(int16_t* p, R16i a) { _mm512_storeu_si512(p, a.v); }
inline R16f r16_to_float(R16i a) { return {_mm512_cvtepi32_ps(a.v)}; }
inline R16f r16_zero() { return {_mm512_setzero_ps()}; }
inline R16f r16_set1(float x) { return {_mm512_set1_ps(x)}; }
inline R16f r16_load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline R16f r16_load(const c10::Half* p) {  // fp16 -> fp32 is exact
  return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
}
inline void r16_store(float* p, R16f a) { _mm512_storeu_ps(p, a.v); }
inline R16f operator+(R16f a, R16f b) { return {_mm512_add_ps(a.v, b.v)}; }
inline R16f operator*(R16f a, R16f b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline R16f fma(R16f a, R16f b, R16f c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
// lanes 0-7 + lanes 8-15 (rows16.h's two halves added)
inline F8 r16_fold(R16f a) {
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1));
  return {_mm256_add_ps(_mm512_castps512_ps256(a.v), hi)};
}

}  // namespace pagedllm::vec
