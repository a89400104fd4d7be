// The quantized GEMM over row-interleaved weights: 16 weight rows side by side in the lanes of
// one vector, the activations broadcast (see quant_linear.cpp for the arithmetic it shares with
// the tile loop: int16 activations per 32 columns, exact integer sums per group).
//
// Why: the tile loop (tile_dots.h) keeps a weight row in the lanes of a vector, so every
// (weight row, activation row) pair needs its own float conversion and scaling per block plus a
// horizontal sum; at 64 rows it reached ~25% of the int16 multiply-add rate. Here lane l of a
// vector is weight row l, an activation pair (x[k], x[k + 1]) is broadcast to all lanes, and one
// dpwssd does 16 rows x 2 columns; a group's integer sums (16 rows) are converted and scaled
// once per group for all 16 rows. 16 dpwssd per 32 columns against 5 float operations, and no
// horizontal sums at all.
//
// Layout (PackedGroupWeight repacks to it where out_features % 16 == 0; see quant_linear.cpp):
//   codes  [N / 16, ng, 16 * G / 2] u4 or [N / 16, ng, 16 * G] i8: per row group and group, 32-byte
//          chunks of 16 rows x a column pair; byte 2l + t of chunk c is row l's column
//          u4: 4c + t (low nibble) and 4c + 2 + t (high nibble);  i8: 2c + t.
//   scales, mins  [N / 16, ng, 16] (the group's values of the 16 rows, contiguous)
//
// Per output (row n, activation row m), the same operations in the same order whatever the tile
// (batch invariance), lane for lane the same in every build (vec R16 types):
//   for each group g:  a += float(isum_g) * (scale_g * dx_g);  b += min_g * sx_g  [+ scale_g * ex_g]
//   y = a + b
// isum_g is exact (|x_q| <= 32767: 32 u4 columns < 2^24, so even its conversion is exact).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "activations.h"
#include "common.h"
#include "interleaved_int8.h"

namespace pagedllm::quant {
namespace {

constexpr int64_t kRowGroup = 16;
constexpr int64_t kActivationBlockBytes = 128 * 1024;
constexpr int64_t kWeightBlockBytes = 256 * 1024;

template <bool U4, int G>
constexpr int64_t kChunksPerGroup = U4 ? G / 4 : G / 2;  // 32-byte chunks

// The group's float terms of R activation rows from their exact integer sums (both loops):
//   a += float(isum) * (scale * dx);  b += min * sx  [+ scale * ex]
template <bool U4, int R>
inline void add_group_terms(const vec::R16i isum[R], vec::R16f s, vec::R16f z,
                            const QuantizedRows& qa, int64_t m0, int64_t g, vec::R16f a[R],
                            vec::R16f b[R]) {
  const int64_t ngp = qa.ngp;
  const float* dx = qa.dx.data() + m0 * ngp;
  const float* sx = qa.sx.data() + m0 * ngp;
  const float* ex = qa.ex.data() + m0 * ngp;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const int64_t o = r * ngp + g;
    a[r] = vec::fma(vec::r16_to_float(isum[r]), s * vec::r16_set1(dx[o]), a[r]);
    b[r] = vec::fma(z, vec::r16_set1(sx[o]), b[r]);
    if constexpr (U4) b[r] = vec::fma(s, vec::r16_set1(ex[o]), b[r]);
  }
}

// Where a row group's codes and float terms come from (the tile loop's one hook): per group g,
// codes(g, buf) gives its 32-byte chunks (in place, or unpacked into buf [G * 16]) and
// terms(g, s, z) its 16 rows' scales and mins. PackedGroupWeight's form loads them as stored;
// quant/kquant.h's K-quant form builds them in registers from the file's compact scales.
// A source with kGroupIsums gives the group's integer sums itself instead of its codes
// (group_isums<R>(g, qa, m0, isum): kquant.h's 6-bit codes on AVX2, unpacked in registers). The
// sums are exact integers, so any way of forming them gives the same bits.
template <bool U4, int G, typename S>
struct StoredTerms {
  static constexpr bool kGroupIsums = false;
  const uint8_t* codes;
  const S* scales;
  const S* mins;
  const uint8_t* group_codes(int64_t g, uint8_t*) const {
    return codes + g * kChunksPerGroup<U4, G> * 32;
  }
  void terms(int64_t g, vec::R16f& s, vec::R16f& z) const {
    s = vec::r16_load(scales + g * kRowGroup);
    z = vec::r16_load(mins + g * kRowGroup);
  }
};

// R activation rows (from m0) against the 16 weight rows of one row group (from `src`, see
// StoredTerms): out [R, 16]. Int8: the activations' int8 codes (interleaved_int8.h), else their
// int16 ones.
template <bool U4, int G, int R, bool Int8, typename Source>
inline void row_group_tile_from(const Source& src, const QuantizedRows& qa, int64_t m0,
                                float* out) {
  constexpr int64_t chunks = kChunksPerGroup<U4, G>;
  const int64_t K = qa.K;
  const int16_t* xq = qa.q.data() + m0 * K;
  vec::R16f a[R], b[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a[r] = b[r] = vec::r16_zero();
  alignas(64) uint8_t buf[chunks * 32];
  for (int64_t g = 0; g < qa.ng; ++g) {
    vec::R16i isum[R];
    const uint8_t* cg = nullptr;
    if constexpr (!Source::kGroupIsums) cg = src.group_codes(g, buf);
    if constexpr (Source::kGroupIsums) {
      src.template group_isums<R>(g, qa, m0, isum);
    } else if constexpr (Int8) {
      group_isums_int8<U4, G, R>(cg, qa, m0, g, isum);
    } else if constexpr (U4) {
#pragma GCC unroll 16
      for (int64_t c = 0; c < chunks; ++c) {
        const vec::R16i v = vec::r16_widen_u8(cg + 32 * c);
        const vec::R16i lo = vec::r16_low_nibbles(v), hi = vec::r16_high_nibbles(v);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const int16_t* xp = xq + r * K + g * G + 4 * c;
          isum[r] = c == 0 ? vec::r16_dot(lo, xp) : vec::r16_dot_add(isum[r], lo, xp);
          isum[r] = vec::r16_dot_add(isum[r], hi, xp + 2);
          // (a chain the compiler may not re-associate: left to itself, GCC summed the group's
          // 32 products of the AVX2 build as a tree, spilling 16 of them to the stack per group)
          vec::r16_keep(isum[r]);
        }
      }
    } else {
      group_isums_i8_int16<G, R>(cg, xq + g * G, K, isum);
    }
    vec::R16f s, z;
    src.terms(g, s, z);
    add_group_terms<U4, R>(isum, s, z, qa, m0, g, a, b);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) vec::r16_store(out + r * kRowGroup, a[r] + b[r]);
}

template <bool U4, int G, typename S, int R, bool Int8>
inline void row_group_tile(const uint8_t* codes, const S* scales, const S* mins,
                           const QuantizedRows& qa, int64_t m0, float* out) {
  row_group_tile_from<U4, G, R, Int8>(StoredTerms<U4, G, S>{codes, scales, mins}, qa, m0, out);
}

// Activation rows per tile from `left`: the build's widest tile, else the largest power of two
// (every row's result is the same whatever tile it is in).
inline int64_t tile_rows(int64_t left) {
  if (left >= vec::kRows16Tile) return vec::kRows16Tile;
  int64_t r = 1;
  while (r * 2 <= left) r *= 2;
  return r;
}

template <bool U4, int G, bool Int8, typename Source>
void row_group_rows_from(const Source& src, const QuantizedRows& qa, int64_t m0, int64_t rows,
                         float* part) {
  switch (rows) {
    case 1: return row_group_tile_from<U4, G, 1, Int8>(src, qa, m0, part);
    case 2: return row_group_tile_from<U4, G, 2, Int8>(src, qa, m0, part);
  }
  if constexpr (vec::kRows16Tile >= 8) {
    if (rows == 4) return row_group_tile_from<U4, G, 4, Int8>(src, qa, m0, part);
    if (rows == 8) return row_group_tile_from<U4, G, 8, Int8>(src, qa, m0, part);
  }
  TORCH_CHECK(false, "row-interleaved tile of ", rows, " rows");
}

template <bool U4, int G, typename S, bool Int8>
void row_group_rows(const uint8_t* codes, const S* scales, const S* mins, const QuantizedRows& qa,
                    int64_t m0, int64_t rows, float* part) {
  row_group_rows_from<U4, G, Int8>(StoredTerms<U4, G, S>{codes, scales, mins}, qa, m0, rows,
                                   part);
}

// out [M, N] = x [M, K] W^T, W row-interleaved (N = 16 * codes.size(0)); Int8: int8
// activations (interleaved_int8.h), else int16.
template <bool U4, int G, typename S, bool Int8 = false>
void interleaved_rows(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                      const at::Tensor& mins, at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  const QuantizedRows qa =
      quantize_activations<U4, G>(x.data_ptr<float>(), M, K, /*pair_blocks=*/false, Int8);
  const int64_t group_bytes = kChunksPerGroup<U4, G> * 32;
  const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  const S* sp = scales.data_ptr<S>();
  const S* mp = mins.data_ptr<S>();
  float* op = out.data_ptr<float>();
  // Blocked as a GEMM: each thread takes whole row groups, in blocks of ~kWeightBlockBytes of
  // codes that stay in L2 while blocks of ~kActivationBlockBytes of int16 activation rows pass
  // them (a row group's codes, K / 2 * 16 bytes for u4, stay in L1 for a block's tiles). Unblocked,
  // a 2048-token prefill chunk (2.4 MB of rows at K = 576) came from L3 once per row group, and
  // weights past L2 (3072 x 576 u4: 0.9 MB) once per activation block: 80-115 GMAC/s a core
  // instead of ~175.
  const int64_t block_rows = std::max<int64_t>(
      8, kActivationBlockBytes / (K * static_cast<int64_t>(Int8 ? 1 : sizeof(int16_t))));
  const int64_t block_groups = std::max<int64_t>(1, kWeightBlockBytes / (qa.ng * group_bytes));
  at::parallel_for(0, N / kRowGroup, 1, [&](int64_t begin, int64_t end) {
    float part[vec::kRows16Tile * kRowGroup];
    for (int64_t j0 = begin; j0 < end; j0 += block_groups) {
      const int64_t j1 = std::min(end, j0 + block_groups);
      for (int64_t block = 0; block < M; block += block_rows) {
        const int64_t block_end = std::min(M, block + block_rows);
        for (int64_t j = j0; j < j1; ++j) {
          const uint8_t* c = cp + j * qa.ng * group_bytes;
          const S* s = sp + j * qa.ng * kRowGroup;
          const S* z = mp + j * qa.ng * kRowGroup;
          for (int64_t m0 = block; m0 < block_end;) {
            const int64_t rows = tile_rows(block_end - m0);
            row_group_rows<U4, G, S, Int8>(c, s, z, qa, m0, rows, part);
            for (int64_t r = 0; r < rows; ++r)
              std::copy_n(part + r * kRowGroup, kRowGroup, op + (m0 + r) * N + j * kRowGroup);
            m0 += rows;
          }
        }
      }
    }
  });
}

// Rows [n0, n1) of a row-interleaved W as float into dst [n1 - n0, K] (embedding lookups):
// scale * code + min, one fused multiply-add as dequantize_rows.
template <bool U4, int G, typename S>
void dequantize_interleaved_rows(const uint8_t* codes, const S* scales, const S* mins, int64_t K,
                                 int64_t n0, int64_t n1, float* dst) {
  const int64_t ng = K / G, chunks = kChunksPerGroup<U4, G>;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t j = n / kRowGroup, l = n % kRowGroup;
    for (int64_t g = 0; g < ng; ++g) {
      const uint8_t* cg = codes + (j * ng + g) * chunks * 32;
      const float s = to_float(scales[(j * ng + g) * kRowGroup + l]);
      const float z = to_float(mins[(j * ng + g) * kRowGroup + l]);
      float* d = dst + (n - n0) * K + g * G;
      for (int64_t c = 0; c < chunks; ++c) {
        for (int t = 0; t < 2; ++t) {
          const uint8_t byte = cg[32 * c + 2 * l + t];
          if constexpr (U4) {
            d[4 * c + t] = std::fma(static_cast<float>(byte & 0x0F), s, z);
            d[4 * c + 2 + t] = std::fma(static_cast<float>(byte >> 4), s, z);
          } else {
            d[2 * c + t] = std::fma(static_cast<float>(static_cast<int8_t>(byte)), s, z);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace pagedllm::quant
