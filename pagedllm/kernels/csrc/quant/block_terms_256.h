// The quantized kernel's block loop at 256 bits: vec::F8 / vec::I8x32, so AVX2 and the portable
// build (vec_scalar.h) compute the same bits. See block_terms.h for the interface.
#pragma once

#include <cstdint>

#include "common.h"

namespace pagedllm::quant {
namespace {

// u4 blocks of 32 columns in pairs (groups of 32): one 32-byte load of codes holds blocks b
// (first 16 bytes) and b + 1. Each 16-bit word i of a block holds four codes, bits 0-3, 4-7,
// 8-11, 12-15 being columns 2i, 2i + 16, 2i + 1, 2i + 17; masks and shifts give four vectors
// of int16 codes (no lane-crossing unpack), and xq of the pair is [P0 | P1 | P2 | P3] with
// Pj[8h + i] the column of word i's j-th code in block b + h.
template <bool U4, int G>
constexpr bool kPairedBlocks = U4 && G == 32;

// Block b + h's int16 codes (natural column order) into its places in the pair's 64.
inline void store_paired(const int16_t* natural, int16_t* pair, int64_t h) {
  for (int i = 0; i < 8; ++i) {
    pair[8 * h + i] = natural[2 * i];
    pair[16 + 8 * h + i] = natural[2 * i + 16];
    pair[32 + 8 * h + i] = natural[2 * i + 1];
    pair[48 + 8 * h + i] = natural[2 * i + 17];
  }
}

// Tiles up to 4 sums (4 x 1, 2 x 2, 1 x 4): 4 accumulators in flight hide the FMA latency.
constexpr int64_t kMaxTileSums = 4;

// A 32-column block of codes as int16: columns 0-15 and 16-31.
template <bool U4>
inline void load_codes16(const uint8_t* row, int64_t b, vec::I8x32 out[2]) {
  if constexpr (U4) {
    vec::nibbles_i16(row + b * 16, out[0], out[1]);
  } else {
    out[0] = vec::widen_i8_i16(row + b * kBlock);
    out[1] = vec::widen_i8_i16(row + b * kBlock + 16);
  }
}

// acc[i] += pair i's block terms sum_b <code_b, xq_b> * dd_b, lane by lane (|int sums| < 2^31).
template <bool U4, int G, int NW, int R>
inline void add_block_terms(const uint8_t* const* codes, const int16_t* xq, int64_t K,
                            const float* dd, int64_t ng, int64_t ahead, vec::F8* acc) {
  const int64_t nb = K / kBlock;
  int64_t b = 0;
  if constexpr (kPairedBlocks<U4, G>) {
    for (; b + 2 <= nb; b += 2) {
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) {
        vec::prefetch(codes[w] + ahead + b * 16);
        const vec::I8x32 v = vec::load_bytes32(codes[w] + b * 16);
        const vec::I8x32 c0 = vec::nibble16<0>(v), c1 = vec::nibble16<1>(v);
        const vec::I8x32 c2 = vec::nibble16<2>(v), c3 = vec::nibble16<3>(v);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const int16_t* xp = xq + r * K + b * kBlock;
          // lanes 0-3: block b (8 columns each), 4-7: block b + 1
          const vec::I8x32 s =
              vec::add32(vec::add32(vec::madd16(c0, vec::load_i16(xp)),
                                    vec::madd16(c1, vec::load_i16(xp + 16))),
                         vec::add32(vec::madd16(c2, vec::load_i16(xp + 32)),
                                    vec::madd16(c3, vec::load_i16(xp + 48))));
          const int i = w * R + r;
          acc[i] = vec::fma(vec::to_float(s), vec::load_two_halves(dd + i * ng + b), acc[i]);
        }
      }
    }
  }
  for (; b < nb; ++b) {
    vec::I8x32 wh[NW][2];
#pragma GCC unroll 16
    for (int w = 0; w < NW; ++w) {
      vec::prefetch(codes[w] + ahead + b * (U4 ? 16 : 32));
      load_codes16<U4>(codes[w], b, wh[w]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const int16_t* xp = xq + r * K + b * kBlock;
      const vec::I8x32 x0 = vec::load_i16(xp), x1 = vec::load_i16(xp + 16);
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) {
        const int i = w * R + r;
        // lane l: columns 2l, 2l + 1 (p0) and 16 + 2l, 17 + 2l (p1)
        const vec::I8x32 p0 = vec::madd16(wh[w][0], x0), p1 = vec::madd16(wh[w][1], x1);
        if constexpr (G == 32) {  // lanes of both halves share the block's factor
          acc[i] = vec::fma(vec::to_float(vec::add32(p0, p1)), vec::set1(dd[i * ng + b]), acc[i]);
        } else {
          acc[i] = vec::fma(vec::to_float(p0), vec::set1(dd[i * ng + 2 * b]), acc[i]);
          acc[i] = vec::fma(vec::to_float(p1), vec::set1(dd[i * ng + 2 * b + 1]), acc[i]);
        }
      }
    }
  }
}

// out[i] = pair i's block terms + its group terms (acc[i], lane by lane, and tail[i]).
template <bool U4, int G, int NW, int R>
inline void block_terms(const uint8_t* const* codes, const int16_t* xq, int64_t K,
                        const float* dd, int64_t ng, int64_t ahead, vec::F8* acc,
                        const float* tail, float* out) {
  add_block_terms<U4, G, NW, R>(codes, xq, K, dd, ng, ahead, acc);
  if constexpr (NW * R == 4) {
    float sums[4];
    vec::reduce_add_pairwise4(acc[0], acc[1], acc[2], acc[3], sums);
    for (int i = 0; i < 4; ++i) out[i] = sums[i] + tail[i];
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < NW * R; ++i) out[i] = vec::reduce_add_pairwise(acc[i]) + tail[i];
  }
}

}  // namespace
}  // namespace pagedllm::quant
