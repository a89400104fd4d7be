// GGUF K-quant weights (Q4_K, Q5_K, Q6_K) held as the file holds their scales: an fp16 pair
// (d, dm) per 256 columns and an int8 pair (sc, m) per group of 16 or 32 columns, and Q5_K's /
// Q6_K's 6-bit codes in 6 bits (a nibble plane and a 2-bit plane, llama.cpp's split), where
// PackedGroupWeight holds a float scale and min per group and 8-bit codes (Q4_K: 6 bits a weight
// instead of 4.63; Q6_K: 12 instead of 6.63).
//
// The row-interleaved loop (interleaved.h) runs unchanged: per row group of 16 weight rows and
// block of row groups, the compact form is decoded into the float scales/mins and int8 codes that
// loop reads (thread-local, L2-sized), then its tiles run. The decoded values are the ones
// PackedGroupWeight would hold:
//   scale = float(d) * float(sc)              one float32 rounding, as gguf_blocks.py's product
//   min   = fma(offset, scale, float(dm) * float(m))
// where offset * scale is exact (scale has at most 11 + 7 significant bits, offset <= 63), so
// the fma is the centred min zeros + offset * scales of group_quant.to_packed_group_weight; the
// codes are code - offset. Hence the same bits as the PackedGroupWeight path in every build,
// and batch-invariant as it is.
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

// Row group j's scale and min per group and lane into s, z [ng, 16]. The fp16 pair of each
// 256 columns is widened once (vec's exact fp16 -> fp32), so the per-group loop is plain
// int8 -> float products the compiler vectorizes (a scalar fp16 conversion per group and lane
// cost more than the M = 1 dot products it feeds).
template <int G>
inline void decode_group_terms(const KQuantScales& k, int64_t j, float* s, float* z) {
  constexpr int64_t per_super = kSuperBlock / G;
  const int8_t* sc = k.sc + j * k.ng * kRowGroup;
  const int8_t* m = k.m + j * k.ng * kRowGroup;
  const c10::Half* d = k.d + j * k.nsb * kRowGroup;
  const c10::Half* dm = k.dm + j * k.nsb * kRowGroup;
  const float offset = static_cast<float>(k.offset);
  for (int64_t sb = 0; sb < k.nsb; ++sb) {
    alignas(64) float dv[kRowGroup], dmv[kRowGroup];
    vec::r16_store(dv, vec::r16_load(d + sb * kRowGroup));
    vec::r16_store(dmv, vec::r16_load(dm + sb * kRowGroup));
    for (int64_t g = sb * per_super; g < (sb + 1) * per_super; ++g) {
      const int8_t* scg = sc + g * kRowGroup;
      const int8_t* mg = m + g * kRowGroup;
      float* sg = s + g * kRowGroup;
      float* zg = z + g * kRowGroup;
      if (k.offset) {
        for (int64_t l = 0; l < kRowGroup; ++l) {
          const float sv = dv[l] * static_cast<float>(scg[l]);
          sg[l] = sv;
          zg[l] = std::fma(offset, sv, dmv[l] * static_cast<float>(mg[l]));
        }
      } else {
        for (int64_t l = 0; l < kRowGroup; ++l) {
          sg[l] = dv[l] * static_cast<float>(scg[l]);
          zg[l] = dmv[l] * static_cast<float>(mg[l]);
        }
      }
    }
  }
}

// `bytes` (a multiple of 128) codes from their 6-bit planes, minus offset, as int8 bytes.
inline void unpack_6bit(const uint8_t* src, int64_t bytes, int64_t offset, uint8_t* dst) {
  const uint8_t o = static_cast<uint8_t>(offset);
  for (int64_t c = 0; c < bytes / 128; ++c) {
    const uint8_t* lo = src + 96 * c;
    const uint8_t* hi = lo + 64;
    uint8_t* q = dst + 128 * c;
    for (int i = 0; i < 32; ++i) {
      const uint8_t h = hi[i], a = lo[i], b = lo[32 + i];
      q[i] = static_cast<uint8_t>(((a & 15) | ((h & 3) << 4)) - o);
      q[32 + i] = static_cast<uint8_t>(((b & 15) | (((h >> 2) & 3) << 4)) - o);
      q[64 + i] = static_cast<uint8_t>(((a >> 4) | (((h >> 4) & 3) << 4)) - o);
      q[96 + i] = static_cast<uint8_t>(((b >> 4) | ((h >> 6) << 4)) - o);
    }
  }
}

// Row group j decoded into the interleaved loop's inputs: codes (u4: the stored ones), s, z.
template <bool U4, int G>
inline const uint8_t* decode_row_group(const uint8_t* codes, const KQuantScales& k, int64_t j,
                                       uint8_t* code_buf, float* s, float* z) {
  const int64_t rg_bytes = k.ng * kChunksPerGroup<U4, G> * 32;
  decode_group_terms<G>(k, j, s, z);
  if constexpr (U4) {
    return codes + j * rg_bytes;
  } else {
    unpack_6bit(codes + j * rg_bytes / 4 * 3, rg_bytes, k.offset, code_buf);
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
// interleaved_rows with each block of row groups decoded first.
template <bool U4, int G, bool Int8>
void kquant_rows(const at::Tensor& x, const uint8_t* cp, const KQuantScales& k, at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  const QuantizedRows qa =
      quantize_activations<U4, G>(x.data_ptr<float>(), M, K, /*pair_blocks=*/false, Int8);
  const int64_t rg_bytes = qa.ng * kChunksPerGroup<U4, G> * 32;
  const int64_t terms = qa.ng * kRowGroup;
  float* op = out.data_ptr<float>();
  const int64_t block_rows = std::max<int64_t>(
      8, kActivationBlockBytes / (K * static_cast<int64_t>(Int8 ? 1 : sizeof(int16_t))));
  const int64_t block_groups = std::max<int64_t>(1, kWeightBlockBytes / rg_bytes);
  at::parallel_for(0, N / kRowGroup, 1, [&](int64_t begin, int64_t end) {
    KQuantScratch& scratch = kquant_scratch();
    scratch.reserve(U4 ? 0 : block_groups * rg_bytes, block_groups * terms, block_groups);
    float part[vec::kRows16Tile * kRowGroup];
    const uint8_t** cs = scratch.row_groups.data();
    for (int64_t j0 = begin; j0 < end; j0 += block_groups) {
      const int64_t j1 = std::min(end, j0 + block_groups);
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t i = j - j0;
        cs[i] = decode_row_group<U4, G>(cp, k, j, scratch.codes.data() + i * rg_bytes,
                                        scratch.s.data() + i * terms, scratch.z.data() + i * terms);
      }
      for (int64_t block = 0; block < M; block += block_rows) {
        const int64_t block_end = std::min(M, block + block_rows);
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t i = j - j0;
          const float* s = scratch.s.data() + i * terms;
          const float* z = scratch.z.data() + i * terms;
          for (int64_t m0 = block; m0 < block_end;) {
            const int64_t rows = tile_rows(block_end - m0);
            row_group_rows<U4, G, float, Int8>(cs[i], s, z, qa, m0, rows, part);
            for (int64_t r = 0; r < rows; ++r)
              std::copy_n(part + r * kRowGroup, kRowGroup, op + (m0 + r) * N + j * kRowGroup);
            m0 += rows;
          }
        }
      }
    }
  });
}

// Row n of a K-quant W as float into dst [K] (embedding lookups): its row group decoded, then
// interleaved.h's dequantize_interleaved_rows (scale * code + min, one fused multiply-add).
template <bool U4, int G>
void kquant_row(const uint8_t* cp, const KQuantScales& k, int64_t K, int64_t n, float* dst) {
  const int64_t rg_bytes = k.ng * kChunksPerGroup<U4, G> * 32;
  KQuantScratch& scratch = kquant_scratch();
  scratch.reserve(U4 ? 0 : rg_bytes, k.ng * kRowGroup);
  const uint8_t* c = decode_row_group<U4, G>(cp, k, n / kRowGroup, scratch.codes.data(),
                                             scratch.s.data(), scratch.z.data());
  const int64_t l = n % kRowGroup;
  dequantize_interleaved_rows<U4, G, float>(c, scratch.s.data(), scratch.z.data(), K, l, l + 1,
                                            dst);
}

}  // namespace
}  // namespace pagedllm::quant
