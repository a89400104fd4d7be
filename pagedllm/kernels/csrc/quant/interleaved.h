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
#include <type_traits>
#include <vector>

#include "activations.h"
#include "common.h"
#include "interleaved_int8.h"

namespace pagedllm::quant {
namespace {

constexpr int64_t kRowGroup = 16;
constexpr int64_t kActivationBlockBytes = 128 * 1024;
constexpr int64_t kWeightBlockBytes = 256 * 1024;
// The widened path (u4 codes, int16 activations, many rows; widened_row_group_rows): where a
// row group's nibbles are widened to int16 once, into L1, for all the rows' tiles instead of
// once per tile. Builds of 2-row tiles only (AVX2, portable): there each tile's unpack is a
// third of its vector work, and with the weights read from L1 a tile takes 4 rows. SmolLM2's
// Q4_1 shapes, 1 thread, AMD Zen 3, 64 and 512 rows: 51-53 GMAC/s against 42-44 (1.2x); at 16
// rows it lost (40 against 43), from 24 it gains. The same integer sums and float steps per
// output: the same bits. (i8 codes widened the same way ran slower, 32 against 38 GMAC/s: their
// loop already widens a chunk in one instruction with its load folded in.)
constexpr bool kWidenU4 = vec::kRows16Tile <= 2;
constexpr int64_t kWidenRows = 24;
constexpr int kWidenTile = 4;

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
  static constexpr bool kWidened = false;
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

// StoredTerms of u4 codes whose nibbles are already int16 (widen_groups): per group and
// 32-byte chunk c, its low nibbles' 32 int16 then its high nibbles' 32 (what the loop below
// makes of the chunk's bytes, made once for all of a call's tiles instead of once per tile).
template <int G, typename S>
struct WidenedTerms : StoredTerms<true, G, S> {
  static constexpr bool kWidened = true;
  const int16_t* widened;  // groups first.. (a K block of them)
  int64_t first;
  const int16_t* group_nibbles(int64_t g) const {
    return widened + (g - first) * kChunksPerGroup<true, G> * 64;
  }
};

template <typename T, typename = void>
struct is_widened : std::false_type {};
template <typename T>
struct is_widened<T, std::void_t<decltype(T::kWidened)>> : std::bool_constant<T::kWidened> {};

// ng groups of a row group's u4 codes as WidenedTerms' int16 nibbles (chunks x 64 int16 each).
template <int G>
inline void widen_groups(const uint8_t* codes, int64_t ng, int16_t* out) {
  const int64_t chunks = ng * kChunksPerGroup<true, G>;
  for (int64_t c = 0; c < chunks; ++c) {
    const vec::R16i v = vec::r16_widen_u8(codes + 32 * c);
    vec::r16_store_i16(out + 64 * c, vec::r16_low_nibbles(v));
    vec::r16_store_i16(out + 64 * c + 32, vec::r16_high_nibbles(v));
  }
}

// R activation rows (from m0) against the 16 weight rows of one row group (from `src`, see
// StoredTerms): out [R, 16]. Int8: the activations' int8 codes (interleaved_int8.h), else their
// int16 ones. Groups [g0, g1) (g1 < 0: to the last): a range that stops short of the last group
// leaves its rows' running sums a and b in `carry` ([R][a, b][16]) instead of writing out, and
// one that starts past 0 takes them from there (the same additions in the same order, so the
// same bits as one pass; widened_row_group_rows goes over K in such blocks).
template <bool U4, int G, int R, bool Int8, typename Source>
inline void row_group_tile_from(const Source& src, const QuantizedRows& qa, int64_t m0,
                                float* out, int64_t g0 = 0, int64_t g1 = -1,
                                float* carry = nullptr) {
  constexpr int64_t chunks = kChunksPerGroup<U4, G>;
  const int64_t K = qa.K;
  if (g1 < 0) g1 = qa.ng;
  const int16_t* xq = qa.q.data() + m0 * K;
  vec::R16f a[R], b[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if (g0 > 0) {
      a[r] = vec::r16_load(carry + r * 32);
      b[r] = vec::r16_load(carry + r * 32 + 16);
    } else {
      a[r] = b[r] = vec::r16_zero();
    }
  }
  alignas(64) uint8_t buf[chunks * 32];
  for (int64_t g = g0; g < g1; ++g) {
    vec::R16i isum[R];
    const uint8_t* cg = nullptr;
    if constexpr (!Source::kGroupIsums && !is_widened<Source>::value) cg = src.group_codes(g, buf);
    if constexpr (Source::kGroupIsums) {
      src.template group_isums<R>(g, qa, m0, isum);
    } else if constexpr (Int8) {
      group_isums_int8<U4, G, R>(cg, qa, m0, g, isum);
    } else if constexpr (U4) {
#pragma GCC unroll 16
      for (int64_t c = 0; c < chunks; ++c) {
        vec::R16i lo, hi;
        if constexpr (is_widened<Source>::value) {
          const int16_t* w = src.group_nibbles(g) + 64 * c;
          lo = vec::r16_load_i16(w);
          hi = vec::r16_load_i16(w + 32);
        } else {
          const vec::R16i v = vec::r16_widen_u8(cg + 32 * c);
          lo = vec::r16_low_nibbles(v);
          hi = vec::r16_high_nibbles(v);
        }
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
  if (g1 < qa.ng) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      vec::r16_store(carry + r * 32, a[r]);
      vec::r16_store(carry + r * 32 + 16, b[r]);
    }
    return;
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
                         float* part, int64_t g0 = 0, int64_t g1 = -1, float* carry = nullptr) {
  switch (rows) {
    case 1: return row_group_tile_from<U4, G, 1, Int8>(src, qa, m0, part, g0, g1, carry);
    case 2: return row_group_tile_from<U4, G, 2, Int8>(src, qa, m0, part, g0, g1, carry);
  }
  if constexpr (vec::kRows16Tile >= 8) {
    if (rows == 4) return row_group_tile_from<U4, G, 4, Int8>(src, qa, m0, part, g0, g1, carry);
    if (rows == 8) return row_group_tile_from<U4, G, 8, Int8>(src, qa, m0, part, g0, g1, carry);
  }
  TORCH_CHECK(false, "row-interleaved tile of ", rows, " rows");
}

template <bool U4, int G, typename S, bool Int8>
void row_group_rows(const uint8_t* codes, const S* scales, const S* mins, const QuantizedRows& qa,
                    int64_t m0, int64_t rows, float* part) {
  row_group_rows_from<U4, G, Int8>(StoredTerms<U4, G, S>{codes, scales, mins}, qa, m0, rows,
                                   part);
}

// Rows [m_begin, m_end) of out's columns col.. (one row group: u4 codes c, terms s and z, int16
// activations) with the codes widened to int16 once per block of kg groups for all the rows'
// tiles (WidenedTerms), each block's nibbles in `nibbles` (kg groups' worth) and the tiles'
// running sums between blocks in `carry` (32 floats a row).
template <int G, typename S>
void widened_row_group_rows(const uint8_t* c, const S* s, const S* z, const QuantizedRows& qa,
                            int64_t m_begin, int64_t m_end, int64_t kg, int16_t* nibbles,
                            float* carry, float* op, int64_t N, int64_t col) {
  constexpr int64_t group_bytes = kChunksPerGroup<true, G> * 32;
  float part[kWidenTile * kRowGroup];
  for (int64_t g0 = 0; g0 < qa.ng; g0 += kg) {
    const int64_t g1 = std::min(qa.ng, g0 + kg);
    widen_groups<G>(c + g0 * group_bytes, g1 - g0, nibbles);
    const WidenedTerms<G, S> src{{c, s, z}, nibbles, g0};
    for (int64_t m0 = m_begin; m0 < m_end;) {
      float* cr = carry + (m0 - m_begin) * 32;
      int64_t rows = kWidenTile;
      if (m_end - m0 >= kWidenTile) {
        row_group_tile_from<true, G, kWidenTile, false>(src, qa, m0, part, g0, g1, cr);
      } else {
        rows = tile_rows(m_end - m0);
        row_group_rows_from<true, G, false>(src, qa, m0, rows, part, g0, g1, cr);
      }
      if (g1 == qa.ng) {
        for (int64_t r = 0; r < rows; ++r)
          std::copy_n(part + r * kRowGroup, kRowGroup, op + (m0 + r) * N + col);
      }
      m0 += rows;
    }
  }
}

// Row groups [j0, j1) of the widened path, all M rows (interleaved_rows' and kquant_rows'
// driver): row_group(j) gives row group j's StoredTerms<true, G, S> (its u4 codes, scales and
// mins). K goes in blocks of ~16 KB of int16 nibbles (in L1 beside the rows' activations), the
// rows in blocks of ~kActivationBlockBytes of a K block's int16 activations.
template <int G, typename RowGroup>
void widened_row_groups(int64_t j0, int64_t j1, const QuantizedRows& qa, int64_t M, float* op,
                        int64_t N, const RowGroup& row_group) {
  const int64_t kg = std::min<int64_t>(qa.ng, std::max<int64_t>(1, 16 * 1024 / (16 * G * 2)));
  const int64_t wrows = std::max<int64_t>(8, kActivationBlockBytes / (kg * G * 2));
  // per-thread buffers, grown and never shrunk (no allocation per call)
  thread_local std::vector<int16_t> nibbles;
  thread_local std::vector<float> carry;
  if (static_cast<int64_t>(nibbles.size()) < kg * 16 * G) nibbles.resize(kg * 16 * G);
  if (static_cast<int64_t>(carry.size()) < wrows * 32) carry.resize(wrows * 32);
  for (int64_t block = 0; block < M; block += wrows) {
    for (int64_t j = j0; j < j1; ++j) {
      const auto t = row_group(j);
      widened_row_group_rows<G>(t.codes, t.scales, t.mins, qa, block, std::min(M, block + wrows),
                                kg, nibbles.data(), carry.data(), op, N, j * kRowGroup);
    }
  }
}

// out [M, N] = x [M, K] W^T, W row-interleaved (N = 16 * codes.size(0)); Int8: int8
// activations (interleaved_int8.h), else int16.
template <bool U4, int G, typename S, bool Int8 = false>
void interleaved_rows(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                      const at::Tensor& mins, at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  QuantizedRows own;
  QuantizedRows& qa = activation_rows(M, own);
  quantize_activations_into<U4, G>(qa, x.data_ptr<float>(), M, K, /*pair_blocks=*/false, Int8);
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
  if constexpr (kWidenU4 && U4 && !Int8) {
    if (M >= kWidenRows) {
      at::parallel_for(0, N / kRowGroup, 1, [&](int64_t begin, int64_t end) {
        for (int64_t j0 = begin; j0 < end; j0 += block_groups) {
          widened_row_groups<G>(j0, std::min(end, j0 + block_groups), qa, M, op, N,
                                [&](int64_t j) {
                                  return StoredTerms<true, G, S>{cp + j * qa.ng * group_bytes,
                                                                 sp + j * qa.ng * kRowGroup,
                                                                 mp + j * qa.ng * kRowGroup};
                                });
        }
      });
      return;
    }
  }
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
