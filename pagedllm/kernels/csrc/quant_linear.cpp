// Weight-only quantized linear layers for CPUs: y[M, N] = x[M, K] W[N, K]^T with W held as
// integer codes + a scale and minimum (float16 where exact, else float32) per group of 16 or
// 32 input columns:
//
//     W[n, k] = scale[n, k / G] * code[n, k] + min[n, k / G]
//
// Two code layouts (every GGUF type, AWQ/GPTQ, int8/int4 at load is repacked into one of them):
//   u4: codes 0..15, 16 bytes per 32 columns; byte j holds column j (low nibble) and column
//       j + 16 (high nibble) — ggml's Q4_0/Q4_1 order, so those blocks repack byte for byte.
//   i8: codes -128..127, one byte per column.
//
// One numerical treatment for every row count (batch invariance: a token's result does not
// depend on how many rows share its call, so greedy output is the same cold, cached, chunked
// or batched). x is quantized per 32 columns to int16 with a float scale, each group is an
// exact integer dot product (AVX-512 VNNI dpwssd / AVX2 madd), scaled once per group; the min
// term uses the exact float sum of x over the group. int16 activations are ~250x more precise
// than llama.cpp's int8 (relative error ~2e-5): SmolLM2 Q4_1 then gives the dequantized float
// model's greedy tokens (48 of 48 on 10 prompts, where int8 activations parted on the first
// token of two). Every (weight row, activation row) sum is formed by the same operations in the
// same order whatever the tile it falls in (tile_dots), and integer sums are exact in any order.
// Against the int8-then-dequantized-GEMM kernel this replaced (SmolLM2's 120 Q4_1 matrices,
// 2 threads, AMD Zen 5, ms, best of 5): AVX-512 build 1 / 4 / 32 / 256 rows 2.8 / 4.3 / 28 / 215
// against 3.0 / 5.6 / 31 / 275-338; AVX2 build 3.0 / 5.9 / 41 / 330 against 3.1 / 4.6 / 29 / 290
// (four int16 multiply-adds per 64 products where int8 took two: the precision's price there).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"
#include "vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>


namespace {

constexpr int64_t kBlock = 32;  // activation quantization block (columns)
// The GEMV prefetches the codes of the weight row this many rows ahead, at the offset it reads
// now. Rows are short (288 bytes for K = 576 in 4 bits) and a tile reads 1-4 of them at once,
// so the hardware prefetcher loses the stream at each row change; one quad ahead and more
// measured alike, 1.25x faster than prefetching within the row (30 layers + LM head of
// SmolLM2 at M = 1, data from DRAM).
constexpr int64_t kPrefetchRows = 8;

// A group's scale or minimum: float32, or float16 where that holds the value exactly (GGUF's
// own scales are fp16: 20 instead of 24 bytes per 32 4-bit weights, the bytes decode reads).
inline float to_float(float v) { return v; }
inline float to_float(at::Half v) {
#ifdef PAGEDLLM_AVX2
  return _cvtsh_ss(v.x);
#else
  return static_cast<float>(v);
#endif
}

#ifdef PAGEDLLM_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// The first n (< 8) values and zeros: masked loads, which touch nothing past the n values
// (fp16: n even, read as n / 2 32-bit lanes).
alignas(32) constexpr int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
inline __m256 load8_masked(const float* p, int64_t n) {
  const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - n));
  return _mm256_maskload_ps(p, mask);
}
inline __m256 load8_masked(const at::Half* p, int64_t n) {
  const __m128i mask = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kLaneMask + 8 - n / 2));
  return _mm256_cvtph_ps(_mm_maskload_epi32(reinterpret_cast<const int*>(p), mask));
}
#endif

// Activation rows quantized per 32 columns to int16 with a float scale dx, with per-group
// (G = 16 or 32 columns) terms, ng = K / G groups per row:
//   dx [M, ng]  the scale of the 32-column block holding the group
//   sx [M, ng]  the exact float sum of x over the group (the minimum's term)
//   ex [M, ng]  8 * (sum(x) - dx * sum(xq)) over the group (centring of u4 codes, see below)
struct QuantizedRows {
  int64_t K = 0, ng = 0, ngp = 0;  // ngp: row stride of dx/sx/ex, ng rounded up to 8 (zeros)
  std::vector<int16_t> q;  // [M, K]
  std::vector<float> dx, sx, ex;
};

// One 32-column block to int16 codes (round to nearest even, as std::nearbyint); returns the
// scale, sums[h] / isums[h] the float / integer sum of each 16-column half.
inline float quantize_block(const float* x, int16_t* q, float sums[2], int32_t isums[2]) {
  float amax = 0.f;
#ifdef PAGEDLLM_AVX2
  __m256 vmax = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int i = 0; i < kBlock; i += 8)
    vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
#else
  for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
#endif
  const float d = amax / 32767.f;
  const float id = d > 0.f ? 1.f / d : 0.f;
#ifdef PAGEDLLM_AVX2
  const __m256 vid = _mm256_set1_ps(id);
  for (int h = 0; h < 2; ++h) {
    const __m256 v0 = _mm256_loadu_ps(x + 16 * h), v1 = _mm256_loadu_ps(x + 16 * h + 8);
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid));
    const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 16 * h),  // undo the lane interleave
                        _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8));
    sums[h] = hsum8(_mm256_add_ps(v0, v1));
    const __m256i s = _mm256_add_epi32(i0, i1);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    isums[h] = _mm_cvtsi128_si32(s4);
  }
#else
  for (int h = 0; h < 2; ++h) {
    sums[h] = 0.f;
    isums[h] = 0;
    for (int i = 16 * h; i < 16 * h + 16; ++i) {
      q[i] = static_cast<int16_t>(std::nearbyint(x[i] * id));
      sums[h] += x[i];
      isums[h] += q[i];
    }
  }
#endif
  return d;
}

// True where the block loop takes u4 blocks of 32 columns in pairs (groups of 32, vector
// paths): one 32-byte load of codes holds blocks b (first 16 bytes) and b + 1, and xq of the
// pair is stored in the order the codes unpack to (store_paired).
//   AVX-512: the 32 bytes widen to 32 words (word k = byte k); low nibbles are columns 0-15,
//     high nibbles 16-31 of each block: xq [b.0-15 | b+1.0-15 | b.16-31 | b+1.16-31].
//   AVX2: each 16-bit word i of a block holds four codes, bits 0-3, 4-7, 8-11, 12-15 being
//     columns 2i, 2i + 16, 2i + 1, 2i + 17; masks and shifts give four vectors of int16 codes
//     (no lane-crossing unpack), and xq is [P0 | P1 | P2 | P3] with Pj[8h + i] the column of
//     word i's j-th code in block b + h.
template <bool U4, int G>
constexpr bool kPairedBlocks =
#ifdef PAGEDLLM_AVX2
    U4 && G == 32;
#else
    false;
#endif

// Block b + h's int16 codes (natural column order) into its places in the pair's 64.
inline void store_paired(const int16_t* natural, int16_t* pair, int64_t h) {
#ifdef PAGEDLLM_AVX512
  std::memcpy(pair + 16 * h, natural, 16 * sizeof(int16_t));
  std::memcpy(pair + 32 + 16 * h, natural + 16, 16 * sizeof(int16_t));
#else
  for (int i = 0; i < 8; ++i) {
    pair[8 * h + i] = natural[2 * i];
    pair[16 + 8 * h + i] = natural[2 * i + 16];
    pair[32 + 8 * h + i] = natural[2 * i + 1];
    pair[48 + 8 * h + i] = natural[2 * i + 17];
  }
#endif
}

template <bool U4, int G>
QuantizedRows quantize_activations(const float* x, int64_t M, int64_t K) {
  const int64_t nb = K / kBlock;
  QuantizedRows r;
  r.K = K;
  r.ng = K / G;
  r.ngp = (r.ng + 7) / 8 * 8;
  r.q.resize(M * K);
  r.dx.resize(M * r.ngp);
  r.sx.resize(M * r.ngp);
  r.ex.resize(M * r.ngp);
  at::parallel_for(0, M, 16, [&](int64_t m_begin, int64_t m_end) {
    for (int64_t m = m_begin; m < m_end; ++m) {
      for (int64_t b = 0; b < nb; ++b) {
        float sums[2];
        int32_t isums[2];
        int16_t* qb = r.q.data() + m * K + b * kBlock;
        alignas(32) int16_t natural[kBlock];
        const bool paired = kPairedBlocks<U4, G> && (b | 1) < nb;
        const float d = quantize_block(x + m * K + b * kBlock, paired ? natural : qb, sums, isums);
        if (paired) {  // see kPairedBlocks
          int16_t* pair = r.q.data() + m * K + (b & ~int64_t{1}) * kBlock;
          store_paired(natural, pair, b & 1);
        }
        const int64_t first = m * r.ngp + b * kBlock / G;
        for (int h = 0; h < kBlock / G; ++h) {  // G 32: one group of both halves, 16: two
          const float s = G == 32 ? sums[0] + sums[1] : sums[h];
          const int32_t is = G == 32 ? isums[0] + isums[1] : isums[h];
          r.dx[first + h] = d;
          r.sx[first + h] = s;
          r.ex[first + h] = 8.f * (s - d * static_cast<float>(is));
        }
      }
    }
  });
  return r;
}

#ifdef PAGEDLLM_AVX2
inline __m256i load_u4_block(const uint8_t* p) {
  const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(w, 4), w);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// A 32-column block of codes as int16: columns 0-15 and 16-31.
template <bool U4>
inline void load_codes16(const uint8_t* row, int64_t b, __m256i out[2]) {
  if constexpr (U4) {
    const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * 16));
    const __m128i low4 = _mm_set1_epi8(0x0F);
    out[0] = _mm256_cvtepu8_epi16(_mm_and_si128(w, low4));
    out[1] = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(w, 4), low4));
  } else {
    const __m128i* p = reinterpret_cast<const __m128i*>(row + b * kBlock);
    out[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128(p));
    out[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128(p + 1));
  }
}

// [p[0] x 4, p[1] x 4]: the factors of lanes 0-3 and 4-7 when they belong to two blocks.
inline __m256 two_factors(const float* p) {
  const __m256 pair =
      _mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))));
  return _mm256_permutevar8x32_ps(pair, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

#ifdef PAGEDLLM_AVX512
// [p[0] x 8, p[1] x 8]: the factors of lanes 0-7 and 8-15 when they belong to two groups.
inline __m512 two_factors16(const float* p) {
  const __m128 pair = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                               _mm512_castps128_ps512(pair));
}

// acc + the 16 pair sums of int16 products w * x (exact in int32 here: |sum| < 2^31).
inline __m512i dot_add32(__m512i acc, __m512i w, __m512i x) {
#ifdef __AVX512VNNI__
  return _mm512_dpwssd_epi32(acc, w, x);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(w, x));
#endif
}
inline __m512i dot32(__m512i w, __m512i x) {
#ifdef __AVX512VNNI__
  return _mm512_dpwssd_epi32(_mm512_setzero_si512(), w, x);
#else
  return _mm512_madd_epi16(w, x);
#endif
}
#endif

// Sum of the 8 lanes as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)): the association of
// reduce4, so a (weight row, activation row) sum is the same bits in every tile shape.
inline float reduce1(__m256 v) {
  const __m256 h = _mm256_hadd_ps(v, v);
  const __m256 q = _mm256_hadd_ps(h, h);
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1)));
}

// The four lane sums of a, b, c, d at once (3 hadds instead of 4 reductions).
inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 q = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
}
#endif

// The block terms of an NW x R tile, sum_b <code_b, xq_b> * dd_b, one implementation per ISA
// (the tile's group terms and reduction are tile_dots'). dd rows have stride ng; `ahead` is
// the code prefetch distance in bytes.
#ifdef PAGEDLLM_AVX512
// 512 bits wide: sums[i] = pair i's block terms, reduced to one float.
template <bool U4, int G, int NW, int R>
inline void block_sums_avx512(const uint8_t* const* codes, const int16_t* xq, int64_t K,
                              const float* dd, int64_t ng, int64_t ahead, float* sums) {
  const int64_t nb = K / kBlock;
  // 32 int16 products per instruction; lane l of a block's sum holds columns 2l, 2l + 1
  __m512 acc16[NW * R];
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) acc16[i] = _mm512_setzero_ps();
  int64_t b = 0;
  if constexpr (kPairedBlocks<U4, G>) {
    const __m512i low4 = _mm512_set1_epi16(0x000F);
    for (; b + 2 <= nb; b += 2) {
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) {
        _mm_prefetch(reinterpret_cast<const char*>(codes[w] + ahead + b * 16), _MM_HINT_T0);
        const __m512i v = _mm512_cvtepu8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[w] + b * 16)));
        const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_srli_epi16(v, 4);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const int16_t* xp = xq + r * K + b * kBlock;
          // lanes 0-7: block b, 8-15: block b + 1
          const __m512i s = dot_add32(dot32(lo, _mm512_loadu_si512(xp)), hi,
                                      _mm512_loadu_si512(xp + 32));
          const int i = w * R + r;
          acc16[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), two_factors16(dd + i * ng + b),
                                     acc16[i]);
        }
      }
    }
  }
  for (; b < nb; ++b) {
    __m512i wz[NW];
#pragma GCC unroll 16
    for (int w = 0; w < NW; ++w) {
      _mm_prefetch(reinterpret_cast<const char*>(codes[w] + ahead + b * (U4 ? 16 : 32)),
                   _MM_HINT_T0);
      wz[w] = U4 ? _mm512_cvtepu8_epi16(load_u4_block(codes[w] + b * 16))
                 : _mm512_cvtepi8_epi16(
                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[w] + b * 32)));
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512i xv = _mm512_loadu_si512(xq + r * K + b * kBlock);
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) {
        const int i = w * R + r;
        // G 32: one factor for the block; 16: lanes 0-7 are group 2b, 8-15 group 2b + 1
        const __m512 f =
            G == 32 ? _mm512_set1_ps(dd[i * ng + b]) : two_factors16(dd + i * ng + 2 * b);
        acc16[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot32(wz[w], xv)), f, acc16[i]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) sums[i] = _mm512_reduce_add_ps(acc16[i]);
}
#endif

#ifdef PAGEDLLM_AVX2
// acc[i] += pair i's block terms, lane by lane (reduced by the caller).
template <bool U4, int G, int NW, int R>
inline void block_sums_avx2(const uint8_t* const* codes, const int16_t* xq, int64_t K,
                            const float* dd, int64_t ng, int64_t ahead, __m256* acc) {
  const int64_t nb = K / kBlock;
  int64_t b = 0;
  if constexpr (kPairedBlocks<U4, G>) {
    const __m256i low4 = _mm256_set1_epi16(0x000F);
    for (; b + 2 <= nb; b += 2) {
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) {
        _mm_prefetch(reinterpret_cast<const char*>(codes[w] + ahead + b * 16), _MM_HINT_T0);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[w] + b * 16));
        const __m256i c0 = _mm256_and_si256(v, low4);
        const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(v, 8), low4);
        const __m256i c3 = _mm256_srli_epi16(v, 12);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const __m256i* xp = reinterpret_cast<const __m256i*>(xq + r * K + b * kBlock);
          // lanes 0-3: block b (8 columns each), 4-7: block b + 1; |sum| < 2^31
          const __m256i s = _mm256_add_epi32(
              _mm256_add_epi32(_mm256_madd_epi16(c0, _mm256_loadu_si256(xp)),
                               _mm256_madd_epi16(c1, _mm256_loadu_si256(xp + 1))),
              _mm256_add_epi32(_mm256_madd_epi16(c2, _mm256_loadu_si256(xp + 2)),
                               _mm256_madd_epi16(c3, _mm256_loadu_si256(xp + 3))));
          const int i = w * R + r;
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), two_factors(dd + i * ng + b), acc[i]);
        }
      }
    }
  }
  for (; b < nb; ++b) {
    __m256i wh[NW][2];
#pragma GCC unroll 16
    for (int w = 0; w < NW; ++w) {
      _mm_prefetch(reinterpret_cast<const char*>(codes[w] + ahead + b * (U4 ? 16 : 32)),
                   _MM_HINT_T0);
      load_codes16<U4>(codes[w], b, wh[w]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const int16_t* xp = xq + r * K + b * kBlock;
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 16));
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) {
        const int i = w * R + r;
        // lane l: columns 2l, 2l + 1 (p0) and 16 + 2l, 17 + 2l (p1); |sum| < 2^31
        const __m256i p0 = _mm256_madd_epi16(wh[w][0], x0), p1 = _mm256_madd_epi16(wh[w][1], x1);
        if constexpr (G == 32) {  // lanes of both halves share the block's factor
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(p0, p1)),
                                   _mm256_broadcast_ss(dd + i * ng + b), acc[i]);
        } else {
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0),
                                   _mm256_broadcast_ss(dd + i * ng + 2 * b), acc[i]);
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1),
                                   _mm256_broadcast_ss(dd + i * ng + 2 * b + 1), acc[i]);
        }
      }
    }
  }
}
#endif

// Portable: sums[i] = pair i's block terms, one group at a time.
template <bool U4, int G, int NW, int R>
inline void block_sums_scalar(const uint8_t* const* codes, const int16_t* xq, int64_t K,
                              const float* dd, int64_t ng, float* sums) {
#pragma GCC unroll 16
  for (int w = 0; w < NW; ++w) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const int i = w * R + r;
      float total = 0.f;
      for (int64_t k0 = 0; k0 < K; k0 += G) {
        int32_t isum = 0;
        for (int64_t k = k0; k < k0 + G; ++k) {
          int c;
          if constexpr (U4) {
            const uint8_t byte = codes[w][(k / 32) * 16 + (k & 15)];
            c = (k & 16) ? (byte >> 4) : (byte & 0x0F);
          } else {
            c = static_cast<int8_t>(codes[w][k]);
          }
          isum += c * xq[r * K + k];
        }
        total += static_cast<float>(isum) * dd[i * ng + k0 / G];
      }
      sums[i] = total;
    }
  }
}

// NW weight rows against R quantized activation rows starting at m0 (a tile of NW * R sums):
//
//   out[w * R + r] = sum_b <code_b, xq_b> * scale_g dx_g  +  sum_g min_g sx_g  [+ scale_g ex_g]
//
// Per-group products are formed first, 8 groups at a time, into dd (scratch [NW * R, ng]), so
// the block loop is an unpack, two int16 multiply-adds and one FMA per block and pair. Weight
// rows share each activation block load; activation rows share each weight block unpack. Why
// the u4 centring term: codes 0..15 are not centred, so the rounding error of xq summed against
// them is ~2x that of centred codes; scale * ex per group turns it into that of (code - 8).
// Each pair's arithmetic is the same whatever the tile, so a row's result does not depend on
// its batch.
template <bool U4, int G, typename S, int NW, int R>
inline void tile_dots(const uint8_t* const* codes, const S* const* scale, const S* const* mins,
                      const QuantizedRows& qa, int64_t m0, float* dd, float* out) {
  // dd rows have stride ngp, as the activation terms (their padding is zero)
  const int64_t K = qa.K, ng = qa.ngp;
  [[maybe_unused]] const int64_t ahead = kPrefetchRows * (U4 ? K / 2 : K);  // bytes
  float tail[NW * R];
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) tail[i] = 0.f;
  int64_t g = 0;
#ifdef PAGEDLLM_AVX2
  __m256 acc[NW * R];
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) acc[i] = _mm256_setzero_ps();
  // (local restrict pointers: stores to dd must not make the compiler reload the vectors')
  const float* __restrict dx = qa.dx.data() + m0 * ng;
  const float* __restrict sx = qa.sx.data() + m0 * ng;
  const float* __restrict ex = qa.ex.data() + m0 * ng;
  // the last groups (fewer than 8) with masked loads, which read nothing past the row;
  // an odd count of fp16 values (no 16-bit masked load) is left to the scalar loop
  const int64_t rem = qa.ng % 8;
  const int64_t vector_end = qa.ng - ((rem & 1) && sizeof(S) == 2 ? rem : 0);
  for (; g < vector_end; g += 8) {
    const int64_t n = std::min<int64_t>(8, qa.ng - g);
#pragma GCC unroll 16
    for (int w = 0; w < NW; ++w) {
      const __m256 s8 = n == 8 ? load8(scale[w] + g) : load8_masked(scale[w] + g, n);
      const __m256 z8 = n == 8 ? load8(mins[w] + g) : load8_masked(mins[w] + g, n);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const int64_t o = r * ng + g;
        const int i = w * R + r;
        _mm256_storeu_ps(dd + i * ng + g, _mm256_mul_ps(s8, _mm256_loadu_ps(dx + o)));
        acc[i] = _mm256_fmadd_ps(z8, _mm256_loadu_ps(sx + o), acc[i]);
        if constexpr (U4) acc[i] = _mm256_fmadd_ps(s8, _mm256_loadu_ps(ex + o), acc[i]);
      }
    }
  }
#endif
  for (; g < qa.ng; ++g) {
#pragma GCC unroll 16
    for (int w = 0; w < NW; ++w) {
      const float s = to_float(scale[w][g]), z = to_float(mins[w][g]);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const int64_t o = (m0 + r) * ng + g;
        const int i = w * R + r;
        dd[i * ng + g] = s * qa.dx[o];
        tail[i] += z * qa.sx[o] + (U4 ? s * qa.ex[o] : 0.f);
      }
    }
  }
  const int16_t* xq = qa.q.data() + m0 * K;
#ifdef PAGEDLLM_AVX512
  float blocks[NW * R];
  block_sums_avx512<U4, G, NW, R>(codes, xq, K, dd, ng, ahead, blocks);
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) out[i] = blocks[i] + reduce1(acc[i]) + tail[i];
#elif defined(PAGEDLLM_AVX2)
  block_sums_avx2<U4, G, NW, R>(codes, xq, K, dd, ng, ahead, acc);
  if constexpr (NW * R == 4) {
    const __m128 sums = reduce4(acc[0], acc[1], acc[2], acc[3]);
    float lanes[4];
    _mm_storeu_ps(lanes, sums);
    for (int i = 0; i < 4; ++i) out[i] = lanes[i] + tail[i];
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < NW * R; ++i) out[i] = reduce1(acc[i]) + tail[i];
  }
#else
  float blocks[NW * R];
  block_sums_scalar<U4, G, NW, R>(codes, xq, K, dd, ng, blocks);
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) out[i] = blocks[i] + tail[i];
#endif
}

// Tiles of 4 weight rows x 1 activation row, 2 x 2, or 1 x R (R = 3, 4): 4 independent
// accumulators in flight, enough to hide the FMA latency. With AVX-512's 32 registers also
// 4 x 4 and 4 x 3 (2 x 4, 2 x 3 where fewer than 4 weight rows are left): each unpacked weight
// block serves 4 activation rows and each activation load 4 weight rows. SmolLM2's 120 Q4_1
// matrices, AMD Zen 5, 2 threads, ms: 32 rows 1 x 4 tiles 37.6, 2 x 4 34.5, 4 x 4 28.0;
// 256 rows 297.7, 270.9, 214.6.
#ifdef PAGEDLLM_AVX512
constexpr int64_t kMaxTileSums = 16;
#else
constexpr int64_t kMaxTileSums = 4;
#endif

template <bool U4, int G, typename S>
void gemv_tile(const uint8_t* const* c, const S* const* s, const S* const* z,
               const QuantizedRows& qa, int64_t m0, int64_t nw, int64_t r, float* dd,
               float* part) {
  if (nw == 4 && r == 1) return tile_dots<U4, G, S, 4, 1>(c, s, z, qa, m0, dd, part);
#ifdef PAGEDLLM_AVX512
  if (nw == 4 && r == 4) return tile_dots<U4, G, S, 4, 4>(c, s, z, qa, m0, dd, part);
  if (nw == 4 && r == 3) return tile_dots<U4, G, S, 4, 3>(c, s, z, qa, m0, dd, part);
  if (nw == 2 && r == 4) return tile_dots<U4, G, S, 2, 4>(c, s, z, qa, m0, dd, part);
  if (nw == 2 && r == 3) return tile_dots<U4, G, S, 2, 3>(c, s, z, qa, m0, dd, part);
#endif
  if (nw == 2) return tile_dots<U4, G, S, 2, 2>(c, s, z, qa, m0, dd, part);
  switch (r) {
    case 4: return tile_dots<U4, G, S, 1, 4>(c, s, z, qa, m0, dd, part);
    case 3: return tile_dots<U4, G, S, 1, 3>(c, s, z, qa, m0, dd, part);
    case 2: return tile_dots<U4, G, S, 1, 2>(c, s, z, qa, m0, dd, part);
    default: return tile_dots<U4, G, S, 1, 1>(c, s, z, qa, m0, dd, part);
  }
}

template <bool U4, int G, typename S>
void gemv_rows(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
               const at::Tensor& mins, at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  const QuantizedRows qa = quantize_activations<U4, G>(x.data_ptr<float>(), M, K);
  const int64_t groups = K / G;
  const int64_t row_bytes = U4 ? K / 2 : K;
  const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  const S* sp = scales.data_ptr<S>();
  const S* mp = mins.data_ptr<S>();
  float* op = out.data_ptr<float>();
  // quads of weight rows; the weight rows of a tile: 4 with one activation row, 2 with two
  // (or with 3-4 where kMaxTileSums allows), else 1 (a tile's activation rows: R = 4 / weight
  // rows, or the 3 or 4 left)
  at::parallel_for(0, (N + 3) / 4, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> dd(kMaxTileSums * qa.ngp);
    float part[kMaxTileSums];
    for (int64_t quad = begin; quad < end; ++quad) {
      for (int64_t m0 = 0; m0 < M;) {
        const int64_t left = M - m0;
        const int64_t r = left == 1 ? 1 : (left == 2 ? 2 : std::min<int64_t>(4, left));
        for (int64_t n = 4 * quad; n < std::min(N, 4 * quad + 4);) {
          const int64_t avail = std::min(N, 4 * quad + 4) - n;
          const int64_t nw = (avail == 4 && (r == 1 || (r >= 3 && 4 * r <= kMaxTileSums))) ? 4
                             : (r * 2 <= kMaxTileSums && r >= 2 && avail >= 2)           ? 2
                                                                                         : 1;
          const int64_t rr = (nw == 1 && r == 2) ? 2 : r;
          const uint8_t* c[4];
          const S* s[4];
          const S* z[4];
          for (int64_t w = 0; w < nw; ++w) {
            c[w] = cp + (n + w) * row_bytes;
            s[w] = sp + (n + w) * groups;
            z[w] = mp + (n + w) * groups;
          }
          gemv_tile<U4, G, S>(c, s, z, qa, m0, nw, rr, dd.data(), part);
          for (int64_t w = 0; w < nw; ++w)
            for (int64_t i = 0; i < rr; ++i) op[(m0 + i) * N + n + w] = part[w * rr + i];
          n += nw;
        }
        m0 += r;
      }
    }
  });
}

// Rows [n0, n1) of W dequantized to float into dst [n1 - n0, K].
template <bool U4, int G, typename S>
void dequantize_rows(const uint8_t* codes, const S* scales, const S* mins, int64_t K,
                     int64_t n0, int64_t n1, float* dst) {
  const int64_t groups = K / G;
  const int64_t row_bytes = U4 ? K / 2 : K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* c = codes + n * row_bytes;
    const S* s = scales + n * groups;
    const S* z = mins + n * groups;
    float* d = dst + (n - n0) * K;
#ifdef PAGEDLLM_AVX2
    for (int64_t b = 0; b < K / kBlock; ++b) {
      const __m256i w = U4 ? load_u4_block(c + b * 16)
                           : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + b * kBlock));
      const __m128i halves[2] = {_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)};
      for (int q = 0; q < 4; ++q) {  // 8 columns at a time
        const __m128i bytes = (q & 1) ? _mm_srli_si128(halves[q / 2], 8) : halves[q / 2];
        const __m256i ints = U4 ? _mm256_cvtepu8_epi32(bytes) : _mm256_cvtepi8_epi32(bytes);
        const int64_t g = (b * kBlock + q * 8) / G;
        const __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), _mm256_set1_ps(to_float(s[g])),
                                         _mm256_set1_ps(to_float(z[g])));
        _mm256_storeu_ps(d + b * kBlock + q * 8, v);
      }
    }
#else
    for (int64_t k = 0; k < K; ++k) {
      int code;
      if constexpr (U4) {
        const uint8_t byte = c[(k / 32) * 16 + (k & 15)];
        code = (k & 16) ? (byte >> 4) : (byte & 0x0F);
      } else {
        code = static_cast<int8_t>(c[k]);
      }
      d[k] = to_float(s[k / G]) * static_cast<float>(code) + to_float(z[k / G]);
    }
#endif
  }
}

template <bool U4, int G, typename S>
at::Tensor run(const at::Tensor& x_in, const at::Tensor& codes, const at::Tensor& scales,
               const at::Tensor& mins) {
  TORCH_CHECK(x_in.dim() == 2, "x must be [M, K]");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = codes.size(0);
  TORCH_CHECK(K % kBlock == 0, "in_features must be a multiple of 32, got ", K);
  TORCH_CHECK(codes.size(1) == (U4 ? K / 2 : K), "codes do not match in_features");
  TORCH_CHECK(scales.size(0) == N && scales.size(1) == K / G && mins.sizes() == scales.sizes());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M > 0) gemv_rows<U4, G, S>(x, codes, scales, mins, out);
  return out.to(x_in.scalar_type());
}

template <typename S>
at::Tensor dispatch_layout(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                           const at::Tensor& mins, int64_t group_size, bool u4) {
  if (u4) {
    return group_size == 32 ? run<true, 32, S>(x, codes, scales, mins)
                            : run<true, 16, S>(x, codes, scales, mins);
  }
  return group_size == 32 ? run<false, 32, S>(x, codes, scales, mins)
                          : run<false, 16, S>(x, codes, scales, mins);
}

template <typename S>
void gather_row(const uint8_t* cp, const at::Tensor& scales, const at::Tensor& mins,
                int64_t group_size, bool u4, int64_t K, int64_t n, float* dst) {
  const S* sp = scales.data_ptr<S>();
  const S* mp = mins.data_ptr<S>();
  if (u4) {
    group_size == 32 ? dequantize_rows<true, 32, S>(cp, sp, mp, K, n, n + 1, dst)
                     : dequantize_rows<true, 16, S>(cp, sp, mp, K, n, n + 1, dst);
  } else {
    group_size == 32 ? dequantize_rows<false, 32, S>(cp, sp, mp, K, n, n + 1, dst)
                     : dequantize_rows<false, 16, S>(cp, sp, mp, K, n, n + 1, dst);
  }
}

}  // namespace

namespace pagedllm {

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                        const at::Tensor& mins, int64_t group_size, bool u4) {
  TORCH_CHECK(group_size == 16 || group_size == 32, "group size must be 16 or 32");
  TORCH_CHECK(codes.is_contiguous() && scales.is_contiguous() && mins.is_contiguous());
  TORCH_CHECK(scales.scalar_type() == mins.scalar_type(), "scales and mins of one dtype");
  if (scales.scalar_type() == at::kHalf) {
    return dispatch_layout<at::Half>(x, codes, scales, mins, group_size, u4);
  }
  TORCH_CHECK(scales.scalar_type() == at::kFloat, "scales must be float32 or float16");
  return dispatch_layout<float>(x, codes, scales, mins, group_size, u4);
}

// Rows `ids` of W as float [len(ids), K] (embedding lookups from a quantized table).
at::Tensor quant_gather_rows(const at::Tensor& ids, const at::Tensor& codes,
                             const at::Tensor& scales, const at::Tensor& mins,
                             int64_t group_size, bool u4, int64_t in_features) {
  const at::Tensor idx = ids.to(at::kLong).contiguous();
  const int64_t T = idx.numel(), K = in_features;
  at::Tensor out = at::empty({T, K}, scales.options().dtype(at::kFloat));
  const int64_t* ip = idx.data_ptr<int64_t>();
  const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = ip[t];
    TORCH_CHECK(n >= 0 && n < codes.size(0), "row id out of range");
    float* dst = out.data_ptr<float>() + t * K;
    if (scales.scalar_type() == at::kHalf) {
      gather_row<at::Half>(cp, scales, mins, group_size, u4, K, n, dst);
    } else {
      gather_row<float>(cp, scales, mins, group_size, u4, K, n, dst);
    }
  }
  return out;
}

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("quant_linear(Tensor x, Tensor codes, Tensor scales, Tensor mins, int group_size, "
        "bool u4) -> Tensor");
  m.def("quant_gather_rows(Tensor ids, Tensor codes, Tensor scales, Tensor mins, "
        "int group_size, bool u4, int in_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("quant_linear", &pagedllm::quant_linear);
  m.impl("quant_gather_rows", &pagedllm::quant_gather_rows);
}
