// The quantized kernel's block loop at 512 bits (AVX-512 BW; VNNI's dpwssd where the build has
// it): 32 int16 products per instruction, and tiles up to 4 x 4 in the 32 vector registers.
// See block_terms.h for the interface.
#pragma once

#include <cstdint>
#include <cstring>

#include "common.h"

namespace pagedllm::quant {
namespace {

// u4 blocks of 32 columns in pairs (groups of 32): one 32-byte load of codes holds blocks b
// (first 16 bytes) and b + 1; the 32 bytes widen to 32 words (word k = byte k), low nibbles
// being columns 0-15 and high nibbles 16-31 of each block, so xq of the pair is
// [b.0-15 | b+1.0-15 | b.16-31 | b+1.16-31].
template <bool U4, int G>
constexpr bool kPairedBlocks = U4 && G == 32;

// Block b + h's int16 codes (natural column order) into its places in the pair's 64.
inline void store_paired(const int16_t* natural, int16_t* pair, int64_t h) {
  std::memcpy(pair + 16 * h, natural, 16 * sizeof(int16_t));
  std::memcpy(pair + 32 + 16 * h, natural + 16, 16 * sizeof(int16_t));
}

// Tiles up to 4 x 4: each unpacked weight block serves 4 activation rows and each activation
// load 4 weight rows. SmolLM2's 120 Q4_1 matrices, AMD Zen 5, 2 threads, ms: 32 rows 1 x 4
// tiles 37.6, 2 x 4 34.5, 4 x 4 28.0; 256 rows 297.7, 270.9, 214.6.
constexpr int64_t kMaxTileSums = 16;

// sums[i] = pair i's block terms sum_b <code_b, xq_b> * dd_b, reduced to one float; lane l of
// a block's sum holds columns 2l, 2l + 1.
template <bool U4, int G, int NW, int R>
inline void block_sums(const uint8_t* const* codes, const int16_t* xq, int64_t K,
                       const float* dd, int64_t ng, int64_t ahead, float* sums) {
  const int64_t nb = K / kBlock;
  vec::F16 acc16[NW * R];
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) acc16[i] = vec::zero16();
  int64_t b = 0;
  if constexpr (kPairedBlocks<U4, G>) {
    for (; b + 2 <= nb; b += 2) {
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) {
        vec::prefetch(codes[w] + ahead + b * 16);
        const vec::I16x32 v = vec::widen_u8_i16x32(codes[w] + b * 16);
        const vec::I16x32 lo = vec::low_nibble16(v), hi = vec::shr4_16(v);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const int16_t* xp = xq + r * K + b * kBlock;
          // lanes 0-7: block b, 8-15: block b + 1
          const vec::I16x32 s = vec::dot_add(vec::dot(lo, vec::load_i16x32(xp)), hi,
                                             vec::load_i16x32(xp + 32));
          const int i = w * R + r;
          acc16[i] =
              vec::fma(vec::to_float(s), vec::load_two_halves16(dd + i * ng + b), acc16[i]);
        }
      }
    }
  }
  for (; b < nb; ++b) {
    vec::I16x32 wz[NW];
#pragma GCC unroll 16
    for (int w = 0; w < NW; ++w) {
      vec::prefetch(codes[w] + ahead + b * (U4 ? 16 : 32));
      wz[w] = U4 ? vec::nibbles_i16x32(codes[w] + b * 16)
                 : vec::widen_i8_i16x32(codes[w] + b * 32);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vec::I16x32 xv = vec::load_i16x32(xq + r * K + b * kBlock);
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) {
        const int i = w * R + r;
        // G 32: one factor for the block; 16: lanes 0-7 are group 2b, 8-15 group 2b + 1
        const vec::F16 f = G == 32 ? vec::set1_16(dd[i * ng + b])
                                   : vec::load_two_halves16(dd + i * ng + 2 * b);
        acc16[i] = vec::fma(vec::to_float(vec::dot(wz[w], xv)), f, acc16[i]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) sums[i] = vec::reduce_add(acc16[i]);
}

// out[i] = pair i's block terms + its group terms (acc[i], lane by lane, and tail[i]).
template <bool U4, int G, int NW, int R>
inline void block_terms(const uint8_t* const* codes, const int16_t* xq, int64_t K,
                        const float* dd, int64_t ng, int64_t ahead, vec::F8* acc,
                        const float* tail, float* out) {
  float blocks[NW * R];
  block_sums<U4, G, NW, R>(codes, xq, K, dd, ng, ahead, blocks);
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) out[i] = blocks[i] + vec::reduce_add_pairwise(acc[i]) + tail[i];
}

}  // namespace
}  // namespace pagedllm::quant
