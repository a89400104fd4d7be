// 256-bit vectors on AVX2 + FMA + F16C: the types the kernel bodies are written against (see
// vec.h). vec_scalar.h computes every function here with the same bits in portable C++.
#pragma once

#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace pagedllm::vec {

// 8 floats.
struct F8 {
  __m256 v;
};
// 256 bits of integers, read as 32 bytes, 16 int16 or 8 int32 lanes by the functions below.
struct I8x32 {
  __m256i v;
};

inline F8 zero() { return {_mm256_setzero_ps()}; }
inline F8 set1(float x) { return {_mm256_set1_ps(x)}; }
inline F8 load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline F8 load(const c10::Half* p) {  // fp16 -> fp32 is exact
  return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
inline F8 load(const c10::BFloat16* p) {  // bf16 -> fp32 is exact: the bits, 16 places up
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))};
}
inline F8 load(const int8_t* p) {  // int8 -> fp32 is exact
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
}
// The first n (< 8) values and zeros, touching nothing past them (fp16: n even).
alignas(32) constexpr int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                               0,  0,  0,  0,  0,  0,  0,  0};
inline F8 load_first(const float* p, int64_t n) {
  const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - n));
  return {_mm256_maskload_ps(p, mask)};
}
inline F8 load_first(const c10::Half* p, int64_t n) {
  const __m128i mask = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kLaneMask + 8 - n / 2));
  return {_mm256_cvtph_ps(_mm_maskload_epi32(reinterpret_cast<const int*>(p), mask))};
}
// [p[0] x 4, p[1] x 4]
inline F8 load_two_halves(const float* p) {
  const __m256 pair =
      _mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))));
  return {_mm256_permutevar8x32_ps(pair, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))};
}
inline void store(float* p, F8 a) { _mm256_storeu_ps(p, a.v); }
inline void store(c10::Half* p, F8 a) {  // round to nearest even, as Tensor.to(float16)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT));
}

inline F8 operator+(F8 a, F8 b) { return {_mm256_add_ps(a.v, b.v)}; }
inline F8 operator-(F8 a, F8 b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline F8 operator*(F8 a, F8 b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline F8 operator/(F8 a, F8 b) { return {_mm256_div_ps(a.v, b.v)}; }
inline F8 fma(F8 a, F8 b, F8 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }    // a * b + c
inline F8 fnma(F8 a, F8 b, F8 c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a * b
// maxps / minps: b where either is NaN
inline F8 max(F8 a, F8 b) { return {_mm256_max_ps(a.v, b.v)}; }
inline F8 min(F8 a, F8 b) { return {_mm256_min_ps(a.v, b.v)}; }
inline F8 abs(F8 a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.f), a.v)}; }
inline F8 floor(F8 a) { return {_mm256_floor_ps(a.v)}; }
// 2^n for integral n in [-127, 128]: the exponent field built from n
inline F8 pow2(F8 n) {
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(e, 23))};
}

// Lane masks (all bits set where true), as floats.
inline F8 equal(F8 a, F8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ)}; }
inline F8 unordered(F8 a, F8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_UNORD_Q)}; }
inline F8 operator|(F8 a, F8 b) { return {_mm256_or_ps(a.v, b.v)}; }
inline F8 zero_where(F8 mask, F8 a) { return {_mm256_andnot_ps(mask.v, a.v)}; }
// bit l: lane l's mask
inline int mask_bits(F8 mask) { return _mm256_movemask_ps(mask.v); }

// Sum of the 8 lanes as ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
inline float reduce_add(F8 a) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
// Sum of the 8 lanes as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)): the association of
// reduce_add_pairwise4, so one sum is the same bits whether reduced alone or with three others.
inline float reduce_add_pairwise(F8 a) {
  const __m256 h = _mm256_hadd_ps(a.v, a.v);
  const __m256 q = _mm256_hadd_ps(h, h);
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1)));
}
// Largest lane as max(max(l0, l4), max(l2, l6)), max(max(l1, l5), max(l3, l7)) (maxps).
inline float reduce_max(F8 a) {
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  return _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
}
inline void reduce_add_pairwise4(F8 a, F8 b, F8 c, F8 d, float out[4]) {
  const __m256 q = _mm256_hadd_ps(_mm256_hadd_ps(a.v, b.v), _mm256_hadd_ps(c.v, d.v));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1)));
}
// [reduce_add_pairwise(a[0]), ..., reduce_add_pairwise(a[7])]: eight sums in one register, in
// reduce_add_pairwise's association (attention's scores of 8 keys from their partial sums).
inline F8 reduce_add_pairwise8(const F8 a[8]) {
  // lo: sums of lanes 0-3 of a[0..3] in its low half, of lanes 4-7 in its high half
  const __m256 lo =
      _mm256_hadd_ps(_mm256_hadd_ps(a[0].v, a[1].v), _mm256_hadd_ps(a[2].v, a[3].v));
  const __m256 hi =
      _mm256_hadd_ps(_mm256_hadd_ps(a[4].v, a[5].v), _mm256_hadd_ps(a[6].v, a[7].v));
  return {_mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20),
                        _mm256_permute2f128_ps(lo, hi, 0x31))};
}

// ---- integers ----
inline I8x32 load_bytes32(const void* p) {
  return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))};
}
inline I8x32 load_i16(const int16_t* p) { return load_bytes32(p); }  // 16 int16
// 16 bytes widened to 16 int16, zero- / sign-extended
inline I8x32 widen_u8_i16(const uint8_t* p) {
  return {_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
inline I8x32 widen_i8_i16(const uint8_t* p) {
  return {_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
// 16 bytes' low nibbles, then their high nibbles, as 16 + 16 int16
inline void nibbles_i16(const uint8_t* p, I8x32& low, I8x32& high) {
  const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i low4 = _mm_set1_epi8(0x0F);
  low = {_mm256_cvtepu8_epi16(_mm_and_si128(w, low4))};
  high = {_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(w, 4), low4))};
}
// 8 bytes widened to 8 int32
inline I8x32 widen_u8_i32(const uint8_t* p) {
  return {_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))};
}
inline I8x32 widen_i8_i32(const uint8_t* p) {
  return {_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))};
}
// int16 lanes: bits [4j, 4j + 4) of each, j = 0..3
template <int J>
inline I8x32 nibble16(I8x32 a) {
  const __m256i shifted = J == 0 ? a.v : _mm256_srli_epi16(a.v, 4 * J);
  return {J == 3 ? shifted : _mm256_and_si256(shifted, _mm256_set1_epi16(0x000F))};
}
// int16 lanes shifted right by n, zeros in (logical)
inline I8x32 shr16(I8x32 a, int n) { return {_mm256_srli_epi16(a.v, n)}; }
// An empty asm that claims to change `a`: the compiler keeps the value in a register at this point
// and cannot reorder the integer additions across it (see interleaved.h's u4 loop). No code.
inline void keep(I8x32& a) { asm("" : "+x"(a.v)); }
// int32 lanes
inline I8x32 and32(I8x32 a, int32_t m) { return {_mm256_and_si256(a.v, _mm256_set1_epi32(m))}; }
inline I8x32 shr32(I8x32 a, int n) { return {_mm256_srli_epi32(a.v, n)}; }
inline I8x32 add32(I8x32 a, I8x32 b) { return {_mm256_add_epi32(a.v, b.v)}; }
inline I8x32 set1_32(int32_t x) { return {_mm256_set1_epi32(x)}; }
// 8 int32 lanes: lane l = a[2l] b[2l] + a[2l + 1] b[2l + 1] of the int16 lanes (exact while
// |sum| < 2^31, which holds for 4-bit or 8-bit codes times int16)
inline I8x32 madd16(I8x32 a, I8x32 b) { return {_mm256_madd_epi16(a.v, b.v)}; }
inline int32_t reduce_add32(I8x32 a) {
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(a.v), _mm256_extracti128_si256(a.v, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
  return _mm_cvtsi128_si32(s4);
}
inline F8 to_float(I8x32 a) { return {_mm256_cvtepi32_ps(a.v)}; }  // int32 lanes
// float lanes to int32, rounded to nearest even
inline I8x32 round_i32(F8 a) { return {_mm256_cvtps_epi32(a.v)}; }
// a's then b's 8 int32 lanes, saturated to int16, in lane order
inline void store_i16(int16_t* p, I8x32 a, I8x32 b) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),  // packs interleaves 128-bit lanes: undo
                      _mm256_permute4x64_epi64(_mm256_packs_epi32(a.v, b.v), 0xD8));
}

inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
// into L2 only (a stream read further ahead than L1 can hold in flight)
inline void prefetch_l2(const void* p) {
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
}
inline float half_to_float(c10::Half h) { return _cvtsh_ss(h.x); }
// one weight of any storage dtype as float32 (exact)
inline float to_f32(float x) { return x; }
inline float to_f32(c10::Half h) { return half_to_float(h); }
inline float to_f32(c10::BFloat16 b) { return static_cast<float>(b); }

}  // namespace pagedllm::vec
