// The functions of vec_avx2.h in portable C++, lane by lane with the same bits: the same
// rounding (std::fma where AVX2 fuses, round to nearest even where it converts), the same NaN
// rules and the same association in the reductions. So the portable build computes what the
// AVX2 build computes, and tests/test_kernel_isas.py compares the two exactly.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

namespace pagedllm::vec {

struct F8 {
  float v[8];
};
struct I8x32 {
  alignas(32) uint8_t b[32];
};

namespace lanes {
template <typename F>
inline F8 map(F f, const F8& a) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = f(a.v[l]);
  return r;
}
template <typename F>
inline F8 map2(F f, const F8& a, const F8& b) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = f(a.v[l], b.v[l]);
  return r;
}
inline uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline float mask(bool m) { return from_bits(m ? 0xFFFFFFFFu : 0u); }
template <typename T>
inline T get(const I8x32& a, int l) {
  T x;
  std::memcpy(&x, a.b + l * sizeof(T), sizeof(T));
  return x;
}
template <typename T>
inline void set(I8x32& a, int l, T x) {
  std::memcpy(a.b + l * sizeof(T), &x, sizeof(T));
}
}  // namespace lanes

inline F8 zero() { return F8{}; }
inline F8 set1(float x) {
  F8 r;
  for (float& l : r.v) l = x;
  return r;
}
inline F8 load(const float* p) {
  F8 r;
  std::memcpy(r.v, p, sizeof(r.v));
  return r;
}
inline F8 load(const c10::Half* p) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = static_cast<float>(p[l]);
  return r;
}
inline F8 load(const c10::BFloat16* p) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = static_cast<float>(p[l]);
  return r;
}
inline F8 load(const int8_t* p) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = static_cast<float>(p[l]);
  return r;
}
template <typename T>
inline F8 load_first(const T* p, int64_t n) {
  F8 r{};
  for (int64_t l = 0; l < n; ++l) r.v[l] = static_cast<float>(p[l]);
  return r;
}
inline F8 load_two_halves(const float* p) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = p[l / 4];
  return r;
}
inline void store(float* p, const F8& a) { std::memcpy(p, a.v, sizeof(a.v)); }
inline void store(c10::Half* p, const F8& a) {  // c10::Half(float) rounds to nearest even
  for (int l = 0; l < 8; ++l) p[l] = c10::Half(a.v[l]);
}

inline F8 operator+(const F8& a, const F8& b) { return lanes::map2(std::plus<>(), a, b); }
inline F8 operator-(const F8& a, const F8& b) { return lanes::map2(std::minus<>(), a, b); }
inline F8 operator*(const F8& a, const F8& b) { return lanes::map2(std::multiplies<>(), a, b); }
inline F8 operator/(const F8& a, const F8& b) { return lanes::map2(std::divides<>(), a, b); }
inline F8 fma(const F8& a, const F8& b, const F8& c) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = std::fma(a.v[l], b.v[l], c.v[l]);
  return r;
}
inline F8 fnma(const F8& a, const F8& b, const F8& c) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = std::fma(-a.v[l], b.v[l], c.v[l]);
  return r;
}
// as maxps / minps: b where either is NaN
inline F8 max(const F8& a, const F8& b) {
  return lanes::map2([](float x, float y) { return x > y ? x : y; }, a, b);
}
inline F8 min(const F8& a, const F8& b) {
  return lanes::map2([](float x, float y) { return x < y ? x : y; }, a, b);
}
inline F8 abs(const F8& a) {
  return lanes::map([](float x) { return std::fabs(x); }, a);
}
inline F8 floor(const F8& a) {
  return lanes::map([](float x) { return std::floor(x); }, a);
}
inline F8 pow2(const F8& n) {
  return lanes::map(
      [](float x) {
        return lanes::from_bits(static_cast<uint32_t>(static_cast<int32_t>(x) + 127) << 23);
      },
      n);
}

inline F8 equal(const F8& a, const F8& b) {
  return lanes::map2([](float x, float y) { return lanes::mask(x == y); }, a, b);
}
inline F8 unordered(const F8& a, const F8& b) {
  return lanes::map2([](float x, float y) { return lanes::mask(std::isnan(x) || std::isnan(y)); },
                     a, b);
}
inline F8 operator|(const F8& a, const F8& b) {
  return lanes::map2(
      [](float x, float y) { return lanes::from_bits(lanes::bits(x) | lanes::bits(y)); }, a, b);
}
inline F8 zero_where(const F8& mask, const F8& a) {
  return lanes::map2(
      [](float m, float x) { return lanes::from_bits(~lanes::bits(m) & lanes::bits(x)); }, mask,
      a);
}
inline int mask_bits(const F8& mask) {
  int bits = 0;
  for (int l = 0; l < 8; ++l) bits |= static_cast<int>(lanes::bits(mask.v[l]) >> 31) << l;
  return bits;
}

inline float reduce_add(const F8& a) {
  const float* v = a.v;
  return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}
inline float reduce_add_pairwise(const F8& a) {
  const float* v = a.v;
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}
inline float reduce_max(const F8& a) {
  const auto mx = [](float x, float y) { return x > y ? x : y; };
  const float* v = a.v;
  return mx(mx(mx(v[0], v[4]), mx(v[2], v[6])), mx(mx(v[1], v[5]), mx(v[3], v[7])));
}
inline void reduce_add_pairwise4(const F8& a, const F8& b, const F8& c, const F8& d,
                                 float out[4]) {
  out[0] = reduce_add_pairwise(a);
  out[1] = reduce_add_pairwise(b);
  out[2] = reduce_add_pairwise(c);
  out[3] = reduce_add_pairwise(d);
}
inline F8 reduce_add_pairwise8(const F8 a[8]) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = reduce_add_pairwise(a[l]);
  return r;
}

// ---- integers ----
inline I8x32 load_bytes32(const void* p) {
  I8x32 r;
  std::memcpy(r.b, p, 32);
  return r;
}
inline I8x32 load_i16(const int16_t* p) { return load_bytes32(p); }
inline I8x32 widen_u8_i16(const uint8_t* p) {
  I8x32 r;
  for (int l = 0; l < 16; ++l) lanes::set<int16_t>(r, l, p[l]);
  return r;
}
inline I8x32 widen_i8_i16(const uint8_t* p) {
  I8x32 r;
  for (int l = 0; l < 16; ++l) lanes::set<int16_t>(r, l, static_cast<int8_t>(p[l]));
  return r;
}
inline void nibbles_i16(const uint8_t* p, I8x32& low, I8x32& high) {
  for (int l = 0; l < 16; ++l) {
    lanes::set<int16_t>(low, l, p[l] & 0x0F);
    lanes::set<int16_t>(high, l, p[l] >> 4);
  }
}
inline I8x32 widen_u8_i32(const uint8_t* p) {
  I8x32 r;
  for (int l = 0; l < 8; ++l) lanes::set<int32_t>(r, l, p[l]);
  return r;
}
inline I8x32 widen_i8_i32(const uint8_t* p) {
  I8x32 r;
  for (int l = 0; l < 8; ++l) lanes::set<int32_t>(r, l, static_cast<int8_t>(p[l]));
  return r;
}
template <int J>
inline I8x32 nibble16(const I8x32& a) {
  I8x32 r;
  for (int l = 0; l < 16; ++l)
    lanes::set<uint16_t>(r, l, (lanes::get<uint16_t>(a, l) >> (4 * J)) & 0x0F);
  return r;
}
inline I8x32 shr16(const I8x32& a, int n) {
  I8x32 r;
  for (int l = 0; l < 16; ++l) lanes::set<uint16_t>(r, l, lanes::get<uint16_t>(a, l) >> n);
  return r;
}
inline void keep(I8x32&) {}  // (vec_avx2.h's register hint; nothing to do here)
inline I8x32 and32(const I8x32& a, int32_t m) {
  I8x32 r;
  for (int l = 0; l < 8; ++l) lanes::set<int32_t>(r, l, lanes::get<int32_t>(a, l) & m);
  return r;
}
inline I8x32 shr32(const I8x32& a, int n) {
  I8x32 r;
  for (int l = 0; l < 8; ++l) lanes::set<uint32_t>(r, l, lanes::get<uint32_t>(a, l) >> n);
  return r;
}
inline I8x32 add32(const I8x32& a, const I8x32& b) {  // wrapping, as vpaddd
  I8x32 r;
  for (int l = 0; l < 8; ++l)
    lanes::set<uint32_t>(r, l, lanes::get<uint32_t>(a, l) + lanes::get<uint32_t>(b, l));
  return r;
}
inline I8x32 set1_32(int32_t x) {
  I8x32 r;
  for (int l = 0; l < 8; ++l) lanes::set<int32_t>(r, l, x);
  return r;
}
inline I8x32 madd16(const I8x32& a, const I8x32& b) {
  I8x32 r;
  for (int l = 0; l < 8; ++l) {
    const int64_t s = int64_t{lanes::get<int16_t>(a, 2 * l)} * lanes::get<int16_t>(b, 2 * l) +
                      int64_t{lanes::get<int16_t>(a, 2 * l + 1)} * lanes::get<int16_t>(b, 2 * l + 1);
    lanes::set<uint32_t>(r, l, static_cast<uint32_t>(s));
  }
  return r;
}
inline int32_t reduce_add32(const I8x32& a) {
  uint32_t s = 0;
  for (int l = 0; l < 8; ++l) s += lanes::get<uint32_t>(a, l);
  return static_cast<int32_t>(s);
}
inline F8 to_float(const I8x32& a) {
  F8 r;
  for (int l = 0; l < 8; ++l) r.v[l] = static_cast<float>(lanes::get<int32_t>(a, l));
  return r;
}
// as cvtps2dq: nearest even; NaN and out of range give INT32_MIN
inline I8x32 round_i32(const F8& a) {
  I8x32 r;
  for (int l = 0; l < 8; ++l) {
    const float x = std::nearbyint(a.v[l]);
    const bool fits = x >= -2147483648.f && x < 2147483648.f;
    lanes::set<int32_t>(r, l, fits ? static_cast<int32_t>(x) : INT32_MIN);
  }
  return r;
}
inline void store_i16(int16_t* p, const I8x32& a, const I8x32& b) {  // saturating, as packssdw
  for (int l = 0; l < 16; ++l) {
    const int32_t x = lanes::get<int32_t>(l < 8 ? a : b, l % 8);
    p[l] = static_cast<int16_t>(x < -32768 ? -32768 : (x > 32767 ? 32767 : x));
  }
}

inline void prefetch(const void* p) { __builtin_prefetch(p); }
inline void prefetch_l2(const void* p) { __builtin_prefetch(p, 0, 2); }
inline float half_to_float(c10::Half h) { return static_cast<float>(h); }
inline float to_f32(float x) { return x; }
inline float to_f32(c10::Half h) { return half_to_float(h); }
inline float to_f32(c10::BFloat16 b) { return static_cast<float>(b); }

}  // namespace pagedllm::vec
