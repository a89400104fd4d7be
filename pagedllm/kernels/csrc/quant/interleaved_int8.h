// The row-interleaved loop (interleaved.h) with int8 activations, opt-in
// (--quantized-activation-dtype int8): x quantized per 32 columns to -127..127 (scale amax / 127)
// instead of int16, so one AVX-512 VNNI dpbusd multiplies 16 weight rows x 4 columns (u8 x s8,
// 64 products) where dpwssd takes 2 columns: twice the products per instruction, llama.cpp's
// and OpenVINO's precision. Per group the integer sum is exact in every build and the float
// epilogue is interleaved.h's, so every build (AVX-512 VNNI, AVX-512 BW, AVX2, portable) gives
// the same bits, and a row's bits do not depend on the rows beside it (batch invariance).
//
// A group's integer sum <code, xq> (16 weight rows' lanes, int32), per build:
//   u4 codes (0..15) are the unsigned operand, xq the signed one:
//     VNNI       dpbusd(code bytes, 4 broadcast xq bytes)
//     AVX-512 BW, AVX2   maddubs into int16 pairs, summed in int16 over the group (at most 8
//                chunks x 2 x 15 x 127 = 30480 < 2^15: no saturation), one madd by 1s per group
//   i8 codes (-128..127) with xq: dpbusd needs one side unsigned, so the codes go in as
//     code + 128 (xor 0x80) and the group's 128 * sum(xq) comes off (xs, from the quantizer):
//     VNNI       dpbusd(code ^ 0x80, xq) - 128 * xs
//     others     the int16 loop's madd on xq held as int16 (maddubs's int16 pair sums of
//                255 x 127 would saturate): no faster than int16 activations there.
// The 4 bytes a dpbusd lane takes are 4 consecutive columns of its row: u4 chunk c's byte pair
// (2l, 2l + 1) holds columns 4c .. 4c + 3 as (lo, lo, hi, hi) nibbles, spread to 4 bytes by
// (v | v << 12) & 0x0F0F0F0F on the pair zero-extended to 32 bits; i8 chunks c and c + 1 hold
// columns 2c, 2c + 1 and 2c + 2, 2c + 3, joined as v_c | v_{c+1} << 16.
#pragma once

#include <cstdint>
#include <cstring>

#include "activations.h"
#include "common.h"

namespace pagedllm::quant {
namespace {

inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// A group's integer sums of i8 codes against R rows of int16 activations (x16: the group's first
// column of row m0, rows K apart): one madd per 2-column chunk. The int16 path's loop
// (interleaved.h), and the int8 path's for i8 codes where there is no VNNI (see above).
//
// The row pointers pass through an empty asm so that the compiler addresses a row's G / 2 pairs as
// one register plus constant offsets. Without it GCC strength-reduced every (row, chunk) address
// of the unrolled loop into its own induction variable across the group loop: R * G / 2 = 128
// pointers at R = 8, spilled to the stack and to vector registers, so each dpwssd came with a
// stack load, an add and a GPR transfer (510 mov, 157 vmovq for 240 dpwssd in the R = 8 loop)
// and i8 codes ran ~1.2x slower per weight than u4 ones (whose loop GCC kept at one pointer a
// row). Same instructions on the vectors, same order: the same bits.
template <int G, int R>
inline void group_isums_i8_int16(const uint8_t* cg, const int16_t* x16, int64_t K,
                                 vec::R16i isum[R]) {
  const int16_t* xr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    xr[r] = x16 + r * K;
    // opaque: no per-chunk induction variables (see above); one row was addressed well without
    // it (and ran ~1.2x slower with it at M = 1 on the LM head, a memory-bound loop)
    if constexpr (R > 1) asm("" : "+r"(xr[r]));
  }
#pragma GCC unroll 16
  for (int c = 0; c < G / 2; ++c) {
    const vec::R16i v = vec::r16_widen_i8(cg + 32 * c);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int16_t* xp = xr[r] + 2 * c;
      isum[r] = c == 0 ? vec::r16_dot(v, xp) : vec::r16_dot_add(isum[r], v, xp);
    }
  }
}

#if defined(PAGEDLLM_VEC_512)

// 16 rows x 4 columns of u4 chunk `p` (32 bytes) as 16 lanes of 4 code bytes
inline __m512i u4_quads(const uint8_t* p) {
  const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  // (v | v << 12) & 0x0F0F0F0F
  return _mm512_ternarylogic_epi32(v, _mm512_slli_epi32(v, 12), _mm512_set1_epi32(0x0F0F0F0F),
                                   0xA8);
}

template <bool U4, int G, int R>
inline void group_isums_int8(const uint8_t* cg, const QuantizedRows& qa, int64_t m0, int64_t g,
                             vec::R16i isum[R]) {
  const int64_t K = qa.K;
  const int8_t* xq = qa.q8.data() + m0 * K + g * G;
  if constexpr (U4) {
    // int32 lanes (VNNI) or int16 pairs (maddubs, widened once per group: see the header)
    __m512i acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int c = 0; c < G / 4; ++c) {
      const __m512i w = u4_quads(cg + 32 * c);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512i x = _mm512_set1_epi32(load4(xq + r * K + 4 * c));
#ifdef __AVX512VNNI__
        acc[r] = _mm512_dpbusd_epi32(acc[r], w, x);
#else
        acc[r] = _mm512_add_epi16(acc[r], _mm512_maddubs_epi16(w, x));
#endif
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#ifdef __AVX512VNNI__
      isum[r].v = acc[r];
#else
      isum[r].v = _mm512_madd_epi16(acc[r], _mm512_set1_epi16(1));
#endif
    }
  } else {
#ifdef __AVX512VNNI__
    constexpr int pairs = G / 4;  // pairs of 2-column chunks
    __m512i acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int c = 0; c < pairs; ++c) {
      const __m256i* p = reinterpret_cast<const __m256i*>(cg + 64 * c);
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p));
      const __m512i hi = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p + 1)), 16);
      // (lo | hi) ^ 0x80808080: the codes + 128, unsigned
      const __m512i w = _mm512_ternarylogic_epi32(lo, hi, _mm512_set1_epi32(0x80808080), 0x56);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_dpbusd_epi32(acc[r], w, _mm512_set1_epi32(load4(xq + r * K + 4 * c)));
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i offset = _mm512_set1_epi32(128 * qa.xs[(m0 + r) * qa.ngp + g]);
      isum[r].v = _mm512_sub_epi32(acc[r], offset);
    }
#else
    group_isums_i8_int16<G, R>(cg, qa.q.data() + m0 * K + g * G, K, isum);
#endif
  }
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

// rows 8h .. 8h + 7 x 4 columns of u4 chunk `p` as 8 lanes of 4 code bytes
inline __m256i u4_quads8(const uint8_t* p, int h) {
  const __m256i v =
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h)));
  return _mm256_and_si256(_mm256_or_si256(v, _mm256_slli_epi32(v, 12)),
                          _mm256_set1_epi32(0x0F0F0F0F));
}

template <bool U4, int G, int R>
inline void group_isums_int8(const uint8_t* cg, const QuantizedRows& qa, int64_t m0, int64_t g,
                             vec::R16i isum[R]) {
  const int64_t K = qa.K;
  if constexpr (U4) {
    const int8_t* xq = qa.q8.data() + m0 * K + g * G;
    __m256i acc[R][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int c = 0; c < G / 4; ++c) {
      const __m256i w0 = u4_quads8(cg + 32 * c, 0), w1 = u4_quads8(cg + 32 * c, 1);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256i x = _mm256_set1_epi32(load4(xq + r * K + 4 * c));
        acc[r][0] = _mm256_add_epi16(acc[r][0], _mm256_maddubs_epi16(w0, x));
        acc[r][1] = _mm256_add_epi16(acc[r][1], _mm256_maddubs_epi16(w1, x));
      }
    }
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      isum[r].h[0].v = _mm256_madd_epi16(acc[r][0], ones);
      isum[r].h[1].v = _mm256_madd_epi16(acc[r][1], ones);
    }
  } else {
    group_isums_i8_int16<G, R>(cg, qa.q.data() + m0 * K + g * G, K, isum);
  }
}

#else  // portable: the exact sums, lane by lane

template <bool U4, int G, int R>
inline void group_isums_int8(const uint8_t* cg, const QuantizedRows& qa, int64_t m0, int64_t g,
                             vec::R16i isum[R]) {
  const int64_t K = qa.K;
  for (int r = 0; r < R; ++r) {
    const int8_t* xq = qa.q8.data() + (m0 + r) * K + g * G;
    int32_t lanes[16] = {};
    for (int l = 0; l < 16; ++l) {
      if constexpr (U4) {
        for (int c = 0; c < G / 4; ++c) {
          for (int t = 0; t < 2; ++t) {
            const uint8_t byte = cg[32 * c + 2 * l + t];
            lanes[l] += (byte & 0x0F) * xq[4 * c + t] + (byte >> 4) * xq[4 * c + 2 + t];
          }
        }
      } else {
        for (int c = 0; c < G / 2; ++c) {
          for (int t = 0; t < 2; ++t)
            lanes[l] += static_cast<int8_t>(cg[32 * c + 2 * l + t]) * xq[2 * c + t];
        }
      }
    }
    std::memcpy(isum[r].h[0].b, lanes, 32);
    std::memcpy(isum[r].h[1].b, lanes + 8, 32);
  }
}

#endif

}  // namespace
}  // namespace pagedllm::quant
