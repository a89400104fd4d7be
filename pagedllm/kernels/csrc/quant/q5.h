// GGUF Q5_0 / Q5_1 weights held as the file holds them: an fp16 d (and Q5_1's fp16 m) per
// 32 columns and 5-bit codes as a nibble plane and a 1-bit plane, where PackedGroupWeight holds
// 8-bit codes and a scale and min per group (Q5_0: 5.5 bits a weight instead of 9; Q5_1: 6
// instead of 9-12).
//
// The row-interleaved tile loop (interleaved.h's row_group_tile_from) runs with Q5Terms as its
// source, through quant/kquant.h's drivers (kquant_rows / kquant_row: in the loop below
// kScratchRows activation rows, block-decoded into scratch from there). Per group the values are
// the ones group_quant.to_packed_group_weight gives PackedGroupWeight:
//   scale = float(d)
//   min   = Q5_0: fma(offset, scale, -16 scale)   Q5_1: fma(offset, scale, float(m))
// (gguf_blocks.py's zero -16 d or m, plus offset * scale, which is exact: 11 significant bits
// times a 5-bit offset, so one rounding either way; Q5_0's min is even exact), codes
// code - offset; offset 0 keeps the zero as is, as to_packed_group_weight does. Hence the same
// bits as the PackedGroupWeight path in every build, and batch-invariant as it is.
//
// Layout (q5_weight.py packs it):
//   codes   [N / 16, ng * 320]: per 128 bytes q of interleaved.h's i8 code stream (unsigned
//           codes 0..31, before centring), 64 nibble bytes lo[i] = q[i] | q[64 + i] << 4 and
//           16 bytes of high bits, bit i of the little-endian 64-bit words w0, w1: q[i] >> 4,
//           q[64 + i] >> 4 (i < 64)
//   scales, mins   float16 [N / 16, ng, 16] (mins empty: Q5_0)
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#include "kquant.h"

namespace pagedllm::quant {
namespace {

constexpr int64_t kQ5Group = 32;
constexpr int64_t kQ5GroupBytes = kChunksPerGroup<false, kQ5Group> * 32;  // unpacked: 512
constexpr int64_t kQ5PackedGroupBytes = kQ5GroupBytes / 128 * 80;           // 320

struct Q5Scales {
  const c10::Half* d;
  const c10::Half* m;  // nullptr: Q5_0 (zero -16 d)
  int64_t ng;
  int64_t offset;  // subtracted from the codes, added back in the min
};

#if defined(__AVX2__) && !defined(PAGEDLLM_VEC_512)
// 32 bits -> 32 bytes: 0x10 where bit i is set
inline __m256i q5_high_bits(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                       3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit),
                          _mm256_set1_epi8(0x10));
}
#endif

// `bytes` (a multiple of 128) codes from their 5-bit planes (src: bytes * 5 / 8), minus offset,
// as int8 bytes into dst. Integer operations only: every build gives the same bytes.
inline void unpack_5bit(const uint8_t* src, int64_t bytes, int64_t offset, uint8_t* dst) {
  const uint8_t o = static_cast<uint8_t>(offset);
  for (int64_t c = 0; c < bytes / 128; ++c) {
    const uint8_t* lo = src + 80 * c;
    const uint8_t* hi = lo + 64;
    uint8_t* q = dst + 128 * c;
    uint64_t w0, w1;
    std::memcpy(&w0, hi, 8);
    std::memcpy(&w1, hi + 8, 8);
#if defined(PAGEDLLM_VEC_512)
    const __m512i l = _mm512_loadu_si512(lo);
    const __m512i low4 = _mm512_set1_epi8(0x0F), sixteen = _mm512_set1_epi8(0x10);
    const __m512i vo = _mm512_set1_epi8(static_cast<char>(o));
    const __m512i q0 = _mm512_sub_epi8(_mm512_and_si512(l, low4), vo);
    const __m512i q1 = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(l, 4), low4), vo);
    _mm512_storeu_si512(q, _mm512_mask_add_epi8(q0, _cvtu64_mask64(w0), q0, sixteen));
    _mm512_storeu_si512(q + 64, _mm512_mask_add_epi8(q1, _cvtu64_mask64(w1), q1, sixteen));
#elif defined(__AVX2__)
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + 32));
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i vo = _mm256_set1_epi8(static_cast<char>(o));
    auto join = [&](__m256i nibbles, uint32_t bits) {
      return _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(nibbles, low4), q5_high_bits(bits)),
                             vo);
    };
    __m256i* out = reinterpret_cast<__m256i*>(q);
    _mm256_storeu_si256(out, join(l0, static_cast<uint32_t>(w0)));
    _mm256_storeu_si256(out + 1, join(l1, static_cast<uint32_t>(w0 >> 32)));
    _mm256_storeu_si256(out + 2, join(_mm256_srli_epi16(l0, 4), static_cast<uint32_t>(w1)));
    _mm256_storeu_si256(out + 3,
                        join(_mm256_srli_epi16(l1, 4), static_cast<uint32_t>(w1 >> 32)));
#else
    for (int i = 0; i < 64; ++i) {
      q[i] = static_cast<uint8_t>(((lo[i] & 15) | (((w0 >> i) & 1) << 4)) - o);
      q[64 + i] = static_cast<uint8_t>(((lo[i] >> 4) | (((w1 >> i) & 1) << 4)) - o);
    }
#endif
  }
}

// Row group j of a Q5_0 / Q5_1 weight as interleaved.h's tile loop source (see StoredTerms
// there): scale and min in registers from the fp16 d (and m), codes unpacked per group.
template <bool U4, int G>
struct Q5Terms {
  static_assert(!U4 && G == kQ5Group, "Q5 weights: int8 codes in groups of 32");
  static constexpr bool kGroupIsums = false;
  const uint8_t* codes;  // this row group's stored codes
  const c10::Half* d;
  const c10::Half* m;
  int64_t offset;

  Q5Terms(const uint8_t* all_codes, const Q5Scales& k, int64_t j)
      : codes(all_codes + j * k.ng * kQ5PackedGroupBytes),
        d(k.d + j * k.ng * kRowGroup),
        m(k.m ? k.m + j * k.ng * kRowGroup : nullptr),
        offset(k.offset) {}

  const uint8_t* group_codes(int64_t g, uint8_t* buf) const {
    unpack_5bit(codes + g * kQ5PackedGroupBytes, kQ5GroupBytes, offset, buf);
    return buf;
  }
  void terms(int64_t g, vec::R16f& s, vec::R16f& z) const {
    s = vec::r16_load(d + g * kRowGroup);
    z = m ? vec::r16_load(m + g * kRowGroup) : s * vec::r16_set1(-16.f);
    if (offset != 0) z = vec::fma(vec::r16_set1(static_cast<float>(offset)), s, z);
  }
};

}  // namespace
}  // namespace pagedllm::quant
