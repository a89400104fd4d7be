// GGUF K-quant weights (Q4_K, Q5_K, Q6_K) held as the file holds their scales: an fp16 pair
// (d, dm) per 256 columns and an int8 pair (sc, m) per group of 16 or 32 columns, and Q5_K's /
// Q6_K's 6-bit codes in 6 bits (a nibble plane and a 2-bit plane, llama.cpp's split), where
// PackedGroupWeight holds a float scale and min per group and 8-bit codes (Q4_K: 6 bits a weight
// instead of 4.63; Q6_K: 12 instead of 6.63).
//
// The row-interleaved tile loop (interleaved.h's row_group_tile_from) runs unchanged with its
// scale/code source hook: KQuantTerms builds each group's 16 scales and mins in registers from the
// int8 and fp16 arrays, and unpacks a 6-bit group's chunks from their planes into a 512-byte stack
// buffer (L1), inside the loop (on AVX2 into registers, straight into the group's integer sums:
// group_isums_6bit). The values are the ones PackedGroupWeight would hold:
//   scale = float(d) * float(sc)              one float32 rounding, as gguf_blocks.py's product
//   min   = fma(offset, scale, float(dm) * float(m))
// where offset * scale is exact (scale has at most 11 + 7 significant bits, offset <= 63), so
// the fma is the centred min zeros + offset * scales of group_quant.to_packed_group_weight; the
// codes are code - offset. Hence the same bits as the PackedGroupWeight path in every build,
// and batch-invariant as it is.
//
// Why in the loop: decoding a block of row groups into float scales and int8 codes in scratch
// first (the first version) wrote and read back ~2x the weight's bytes per call, and at decode
// (M = 1..8 rows) that pass cost as much as the dot products: 0.4-0.5x PackedGroupWeight's speed.
// Where many activation rows pass each row group (prefill), the in-loop work is repeated per tile
// of rows, so from kScratchRows rows the block is decoded once into scratch (the same functions,
// hence the same values) and the tiles read it, as before.
//
// Layout (kquant_weight.py packs it):
//   codes         u4: interleaved.h's u4 codes [N / 16, ng, 8 * G]
//                 6-bit: the bytes of interleaved.h's i8 codes (unsigned code 0..63, before
//                 centring) in 6 bits, [N / 16, ng * 16 * G * 3 / 4]: per 128 bytes q of the
//                 row group's stream, 64 nibble bytes lo[i] = q[i] | q[64 + i] << 4,
//                 lo[32 + i] = q[32 + i] | q[96 + i] << 4, then 32 bytes of high bit pairs
//                 hi[i] = q[i] >> 4 | q[32 + i] >> 4 << 2 | q[64 + i] >> 4 << 4 | q[96 + i] >> 4 << 6
//   sub_scales, sub_mins   int8 [N / 16, ng, 16] (sub_mins empty: the same as sub_scales, Q6_K)
//   super_scales, super_mins   float16 [N / 16, K / 256, 16]
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "interleaved.h"

namespace pagedllm::quant {
namespace {

constexpr int64_t kSuperBlock = 256;

struct KQuantScales {
  const int8_t* sc;
  const int8_t* m;
  const c10::Half* d;
  const c10::Half* dm;
  int64_t ng, nsb;
  int64_t offset;  // subtracted from 6-bit codes, added back in the min (0 for u4)
};

// From this many activation rows the block-decoded scratch path (see the notes above).
#ifndef PAGEDLLM_KQUANT_SCRATCH_ROWS
#define PAGEDLLM_KQUANT_SCRATCH_ROWS 32
#endif
constexpr int64_t kScratchRows = PAGEDLLM_KQUANT_SCRATCH_ROWS;

// 16 int8 -> 16 floats (exact)
inline vec::R16f r16_load_i8(const int8_t* p) {
#if defined(PAGEDLLM_VEC_512)
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))};
#else
  const uint8_t* u = reinterpret_cast<const uint8_t*>(p);
  return {{vec::to_float(vec::widen_i8_i32(u)), vec::to_float(vec::widen_i8_i32(u + 8))}};
#endif
}

// `bytes` (a multiple of 128) codes from their 6-bit planes (src: bytes * 3 / 4), minus offset,
// as int8 bytes into dst. Integer operations only: every build gives the same bytes.
inline void unpack_6bit(const uint8_t* src, int64_t bytes, int64_t offset, uint8_t* dst) {
  const uint8_t o = static_cast<uint8_t>(offset);
  for (int64_t c = 0; c < bytes / 128; ++c) {
    const uint8_t* lo = src + 96 * c;
    const uint8_t* hi = lo + 64;
    uint8_t* q = dst + 128 * c;
#if defined(PAGEDLLM_VEC_512)
    // [lo 0..31 | lo 32..63] and [hi | hi]: chunks 0-1 take the low nibbles and hi's bit pairs
    // 0 / 1 (<< 4, << 2 to bits 4-5), chunks 2-3 the high nibbles and pairs 2 / 3 (>> 0, >> 2)
    const __m512i l = _mm512_loadu_si512(lo);
    const __m512i h =
        _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)));
    const __m512i low4 = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30);
    const __m512i up01 = _mm512_sllv_epi16(
        h, _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1));
    const __m512i up23 = _mm512_srlv_epi16(
        h, _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1));
    const __m512i q01 =
        _mm512_or_si512(_mm512_and_si512(l, low4), _mm512_and_si512(up01, bits45));
    const __m512i q23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), low4),
                                        _mm512_and_si512(up23, bits45));
    const __m512i vo = _mm512_set1_epi8(static_cast<char>(o));
    _mm512_storeu_si512(q, _mm512_sub_epi8(q01, vo));
    _mm512_storeu_si512(q + 64, _mm512_sub_epi8(q23, vo));
#elif defined(__AVX2__)
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + 32));
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi));
    const __m256i low4 = _mm256_set1_epi8(0x0F), bits45 = _mm256_set1_epi8(0x30);
    const __m256i vo = _mm256_set1_epi8(static_cast<char>(o));
    auto join = [&](__m256i nibbles, __m256i pairs) {
      return _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(nibbles, low4),
                                             _mm256_and_si256(pairs, bits45)), vo);
    };
    __m256i* out = reinterpret_cast<__m256i*>(q);
    _mm256_storeu_si256(out, join(l0, _mm256_slli_epi16(h, 4)));
    _mm256_storeu_si256(out + 1, join(l1, _mm256_slli_epi16(h, 2)));
    _mm256_storeu_si256(out + 2, join(_mm256_srli_epi16(l0, 4), h));
    _mm256_storeu_si256(out + 3, join(_mm256_srli_epi16(l1, 4), _mm256_srli_epi16(h, 2)));
#else
    for (int i = 0; i < 32; ++i) {
      const uint8_t hb = hi[i], a = lo[i], b = lo[32 + i];
      q[i] = static_cast<uint8_t>(((a & 15) | ((hb & 3) << 4)) - o);
      q[32 + i] = static_cast<uint8_t>(((b & 15) | (((hb >> 2) & 3) << 4)) - o);
      q[64 + i] = static_cast<uint8_t>(((a >> 4) | (((hb >> 4) & 3) << 4)) - o);
      q[96 + i] = static_cast<uint8_t>(((b >> 4) | ((hb >> 6) << 4)) - o);
    }
#endif
  }
}

#if defined(__AVX2__) && !defined(PAGEDLLM_VEC_512)
// A 6-bit group's integer sums against R rows of int16 activations (x16: the group's first
// column of row m0, rows K apart; xs: the group's sum of them, rows ngp apart), its codes
// unpacked in registers: the sums group_isums_i8_int16 forms over unpack_6bit's bytes, exactly
// (integers, |sum| < 2^31), so the same bits.
//
// Why: unpack_6bit stored each 128 codes to a stack buffer that the int16 loop read back and
// widened, ~14 instructions per 32-byte chunk, and the 6-bit layers (the LM head, a merged qkv,
// Q6_K ffn_down) ran at 9-11 GB/s where PackedGroupWeight's 8-bit codes read 15-18. Here:
//  - the codes stay unsigned (0..63): the offset comes off the sum once per group, as
//    offset * sum(x) (4 subtractions of bytes per 128 codes saved);
//  - bytes widen by unpacking with zeros in each 128-bit lane (1 instruction per 16 codes, no
//    cross-lane extract), so a madd's int32 lanes hold rows 0-3 | 8-11 and 4-7 | 12-15, put back
//    in order once per group with two lane permutes.
template <int G, int R>
inline void group_isums_6bit(const uint8_t* src, int32_t offset, const int16_t* x16, int64_t K,
                             const int32_t* xs, int64_t ngp, vec::R16i isum[R]) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), bits45 = _mm256_set1_epi8(0x30);
  const __m256i zero = _mm256_setzero_si256();
  const int16_t* xr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    xr[r] = x16 + r * K;
    if constexpr (R > 1) asm("" : "+r"(xr[r]));  // (see group_isums_i8_int16)
  }
  __m256i acc[R][2];  // [rows 0-3 | 8-11], [rows 4-7 | 12-15]
#pragma GCC unroll 4
  for (int u = 0; u < G / 8; ++u) {  // 128 codes (4 chunks) per 96 stored bytes
    const __m256i* p = reinterpret_cast<const __m256i*>(src + 96 * u);
    const __m256i l0 = _mm256_loadu_si256(p), l1 = _mm256_loadu_si256(p + 1);
    const __m256i h = _mm256_loadu_si256(p + 2);
    // unpack_6bit's chunks (nibbles, bit pairs to bits 4-5), without the offset
    const __m256i c[4] = {
        _mm256_or_si256(_mm256_and_si256(l0, low4),
                        _mm256_and_si256(_mm256_slli_epi16(h, 4), bits45)),
        _mm256_or_si256(_mm256_and_si256(l1, low4),
                        _mm256_and_si256(_mm256_slli_epi16(h, 2), bits45)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                        _mm256_and_si256(h, bits45)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                        _mm256_and_si256(_mm256_srli_epi16(h, 2), bits45))};
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const int ch = 4 * u + k;  // the group's chunk: columns 2 ch, 2 ch + 1
      const __m256i w0 = _mm256_unpacklo_epi8(c[k], zero), w1 = _mm256_unpackhi_epi8(c[k], zero);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t pair;
        std::memcpy(&pair, xr[r] + 2 * ch, 4);
        const __m256i x = _mm256_set1_epi32(pair);
        const __m256i p0 = _mm256_madd_epi16(w0, x), p1 = _mm256_madd_epi16(w1, x);
        acc[r][0] = ch == 0 ? p0 : _mm256_add_epi32(acc[r][0], p0);
        acc[r][1] = ch == 0 ? p1 : _mm256_add_epi32(acc[r][1], p1);
        // (a chain, as interleaved.h's u4 loop keeps it: no re-association into a tree)
        asm("" : "+x"(acc[r][0]), "+x"(acc[r][1]));
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256i o = _mm256_set1_epi32(offset * xs[r * ngp]);
    isum[r].h[0].v = _mm256_sub_epi32(_mm256_permute2x128_si256(acc[r][0], acc[r][1], 0x20), o);
    isum[r].h[1].v = _mm256_sub_epi32(_mm256_permute2x128_si256(acc[r][0], acc[r][1], 0x31), o);
  }
}
#endif

// Row group j of a K-quant weight as interleaved.h's tile loop source (see StoredTerms there):
// scales and mins built in registers, 6-bit codes unpacked per group (on AVX2 in registers, into
// the group's integer sums: group_isums_6bit).
template <bool U4, int G>
struct KQuantTerms {
  static constexpr int64_t kGroupBytes = kChunksPerGroup<U4, G> * 32;  // unpacked
  static constexpr int64_t kPerSuper = kSuperBlock / G;
#if defined(__AVX2__) && !defined(PAGEDLLM_VEC_512)
  static constexpr bool kGroupIsums = !U4;
#else
  static constexpr bool kGroupIsums = false;
#endif
  const uint8_t* codes;  // this row group's stored codes
  const int8_t* sc;
  const int8_t* m;
  const c10::Half* d;
  const c10::Half* dm;
  float offset;
  int32_t offset_i;

  KQuantTerms(const uint8_t* all_codes, const KQuantScales& k, int64_t j)
      : codes(all_codes + j * k.ng * (U4 ? kGroupBytes : kGroupBytes / 4 * 3)),
        sc(k.sc + j * k.ng * kRowGroup),
        m(k.m + j * k.ng * kRowGroup),
        d(k.d + j * k.nsb * kRowGroup),
        dm(k.dm + j * k.nsb * kRowGroup),
        offset(static_cast<float>(k.offset)),
        offset_i(static_cast<int32_t>(k.offset)) {}

#if defined(__AVX2__) && !defined(PAGEDLLM_VEC_512)
  template <int R>
  void group_isums(int64_t g, const QuantizedRows& qa, int64_t m0, vec::R16i isum[R]) const {
    group_isums_6bit<G, R>(codes + g * (kGroupBytes / 4 * 3), offset_i,
                           qa.q.data() + m0 * qa.K + g * G, qa.K,
                           qa.xs.data() + m0 * qa.ngp + g, qa.ngp, isum);
  }
#endif

  const uint8_t* group_codes(int64_t g, uint8_t* buf) const {
    if constexpr (U4) {
      return codes + g * kGroupBytes;
    } else {
      unpack_6bit(codes + g * (kGroupBytes / 4 * 3), kGroupBytes, static_cast<int64_t>(offset),
                  buf);
      return buf;
    }
  }
  void terms(int64_t g, vec::R16f& s, vec::R16f& z) const {
    const int64_t sb = g / kPerSuper;
    s = vec::r16_load(d + sb * kRowGroup) * r16_load_i8(sc + g * kRowGroup);
    z = vec::r16_load(dm + sb * kRowGroup) * r16_load_i8(m + g * kRowGroup);
    if (!U4 && offset != 0.f) z = vec::fma(vec::r16_set1(offset), s, z);
  }
};

// Row group j decoded into the interleaved loop's stored inputs (the scratch path): codes (u4:
// the stored ones), s, z [ng, 16], by the source's own functions (the same values). Src: a tile
// loop source built as Src(codes, params, j) (KQuantTerms here, Q5Terms in quant/q5.h).
template <bool U4, int G, typename Src, typename Params>
inline const uint8_t* decode_row_group(const uint8_t* codes, const Params& k, int64_t j,
                                       uint8_t* code_buf, float* s, float* z) {
  const Src src(codes, k, j);
  constexpr int64_t group_bytes = kChunksPerGroup<U4, G> * 32;
  for (int64_t g = 0; g < k.ng; ++g) {
    vec::R16f sg, zg;
    src.terms(g, sg, zg);
    vec::r16_store(s + g * kRowGroup, sg);
    vec::r16_store(z + g * kRowGroup, zg);
  }
  if constexpr (U4) {
    return src.group_codes(0, code_buf);  // (stored in place)
  } else {
    for (int64_t g = 0; g < k.ng; ++g) src.group_codes(g, code_buf + g * group_bytes);
    return code_buf;
  }
}

// Per-thread scratch for decoded row groups (grown, never shrunk: no allocation per call).
struct KQuantScratch {
  std::vector<uint8_t> codes;
  std::vector<float> s, z;
  std::vector<const uint8_t*> row_groups;  // each decoded row group's codes
  void reserve(int64_t code_bytes, int64_t terms, int64_t groups = 1) {
    if (static_cast<int64_t>(codes.size()) < code_bytes) codes.resize(code_bytes);
    if (static_cast<int64_t>(s.size()) < terms) s.resize(terms), z.resize(terms);
    if (static_cast<int64_t>(row_groups.size()) < groups) row_groups.resize(groups);
  }
};

inline KQuantScratch& kquant_scratch() {
  thread_local KQuantScratch scratch;
  return scratch;
}

// out [M, N] = x [M, K] W^T for a K-quant W (N = 16 * number of row groups): interleaved.h's
// interleaved_rows with the K-quant source in the tile loop (M < kScratchRows), or with each
// block of row groups decoded into scratch first.
template <bool U4, int G, bool Int8, typename Src = KQuantTerms<U4, G>,
          typename Params = KQuantScales>
void kquant_rows(const at::Tensor& x, const uint8_t* cp, const Params& k, at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  QuantizedRows own;
  QuantizedRows& qa = activation_rows(M, own);
  quantize_activations_into<U4, G>(qa, x.data_ptr<float>(), M, K, /*pair_blocks=*/false, Int8);
  const int64_t rg_bytes = qa.ng * kChunksPerGroup<U4, G> * 32;
  const int64_t terms = qa.ng * kRowGroup;
  float* op = out.data_ptr<float>();
  const int64_t block_rows = std::max<int64_t>(
      8, kActivationBlockBytes / (K * static_cast<int64_t>(Int8 ? 1 : sizeof(int16_t))));
  // (compact bytes: the in-loop path's blocks hold as many row groups as the stored form's)
  const int64_t block_groups = std::max<int64_t>(1, kWeightBlockBytes / rg_bytes);
  const bool scratch_path = M >= kScratchRows;
  at::parallel_for(0, N / kRowGroup, 1, [&](int64_t begin, int64_t end) {
    float part[vec::kRows16Tile * kRowGroup];
    auto tiles = [&](int64_t j, int64_t block, int64_t block_end, const auto& src) {
      for (int64_t m0 = block; m0 < block_end;) {
        const int64_t rows = tile_rows(block_end - m0);
        row_group_rows_from<U4, G, Int8>(src, qa, m0, rows, part);
        for (int64_t r = 0; r < rows; ++r)
          std::copy_n(part + r * kRowGroup, kRowGroup, op + (m0 + r) * N + j * kRowGroup);
        m0 += rows;
      }
    };
    if (!scratch_path) {
      for (int64_t j0 = begin; j0 < end; j0 += block_groups) {
        const int64_t j1 = std::min(end, j0 + block_groups);
        for (int64_t block = 0; block < M; block += block_rows) {
          const int64_t block_end = std::min(M, block + block_rows);
          for (int64_t j = j0; j < j1; ++j)
            tiles(j, block, block_end, Src(cp, k, j));
        }
      }
      return;
    }
    KQuantScratch& scratch = kquant_scratch();
    scratch.reserve(U4 ? 0 : block_groups * rg_bytes, block_groups * terms, block_groups);
    const uint8_t** cs = scratch.row_groups.data();
    for (int64_t j0 = begin; j0 < end; j0 += block_groups) {
      const int64_t j1 = std::min(end, j0 + block_groups);
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t i = j - j0;
        cs[i] = decode_row_group<U4, G, Src>(cp, k, j, scratch.codes.data() + i * rg_bytes,
                                        scratch.s.data() + i * terms, scratch.z.data() + i * terms);
      }
      // u4 codes with int16 activations over many rows: interleaved.h's widened path
      if constexpr (kWidenU4 && U4 && !Int8) {
        if (M >= kWidenRows) {
          widened_row_groups<G>(j0, j1, qa, M, op, N, [&](int64_t j) {
            const int64_t i = j - j0;
            return StoredTerms<true, G, float>{cs[i], scratch.s.data() + i * terms,
                                               scratch.z.data() + i * terms};
          });
          continue;
        }
      }
      for (int64_t block = 0; block < M; block += block_rows) {
        const int64_t block_end = std::min(M, block + block_rows);
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t i = j - j0;
          tiles(j, block, block_end,
                StoredTerms<U4, G, float>{cs[i], scratch.s.data() + i * terms,
                                          scratch.z.data() + i * terms});
        }
      }
    }
  });
}

// Row n of a K-quant W as float into dst [K] (embedding lookups): its row group decoded, then
// interleaved.h's dequantize_interleaved_rows (scale * code + min, one fused multiply-add).
template <bool U4, int G, typename Src = KQuantTerms<U4, G>, typename Params = KQuantScales>
void kquant_row(const uint8_t* cp, const Params& k, int64_t K, int64_t n, float* dst) {
  const int64_t rg_bytes = k.ng * kChunksPerGroup<U4, G> * 32;
  KQuantScratch& scratch = kquant_scratch();
  scratch.reserve(U4 ? 0 : rg_bytes, k.ng * kRowGroup);
  const uint8_t* c = decode_row_group<U4, G, Src>(cp, k, n / kRowGroup, scratch.codes.data(),
                                             scratch.s.data(), scratch.z.data());
  const int64_t l = n % kRowGroup;
  dequantize_interleaved_rows<U4, G, float>(c, scratch.s.data(), scratch.z.data(), K, l, l + 1,
                                            dst);
}

}  // namespace
}  // namespace pagedllm::quant
