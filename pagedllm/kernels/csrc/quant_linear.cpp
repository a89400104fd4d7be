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
// Few rows (decode): x is quantized per 32 columns (int8 against u4 codes, as llama.cpp does;
// int16 against i8 codes) with a float scale, and each group is an integer dot product (AVX2
// maddubs / madd), scaled once per group; the min term uses the exact float sum of x over the
// group. Many rows (prefill, large batches): panels of W are dequantized to float and
// multiplied by ATen's GEMM, where the dequantization is amortized over the rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "dense_tile.h"
#include "ops.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>


namespace {

constexpr int64_t kBlock = 32;  // activation quantization block (columns)
constexpr int64_t kDequantizedGemvMaxRows = 32;  // beyond: dequantized panels + ATen GEMM
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

// Activation rows quantized per 32 columns with a float scale dx: to int8 against u4 codes (as
// llama.cpp does; byte products), to int16 against i8 codes (16-bit products cost the same
// instructions there and are ~250x more precise: the LM head's logits are the one output
// where activation rounding shows directly, ~0.1 on a logit with int8), with per-group
// (G = 16 or 32 columns) terms, ng = K / G groups per row:
//   dx [M, ng]  the scale of the 32-column block holding the group
//   sx [M, ng]  the exact float sum of x over the group (the minimum's term)
//   ex [M, ng]  8 * (sum(x) - dx * sum(xq)) over the group (centring of u4 codes, see below)
struct QuantizedRows {
  int64_t K = 0, ng = 0, ngp = 0;  // ngp: row stride of dx/sx/ex, ng rounded up to 8 (zeros)
  std::vector<int8_t> q;     // [M, K] (u4 codes)
  std::vector<int16_t> q16;  // [M, K] (i8 codes)
  std::vector<float> dx, sx, ex;
};

// One 32-column block to int16 codes; returns the scale, sums[h] the float sum of each half.
inline float quantize_block16(const float* x, int16_t* q, float sums[2]) {
  float amax = 0.f;
  for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 32767.f;
  const float id = d > 0.f ? 1.f / d : 0.f;
#ifdef PAGEDLLM_AVX2
  const __m256 vid = _mm256_set1_ps(id);
  for (int h = 0; h < 2; ++h) {
    const __m256 v0 = _mm256_loadu_ps(x + 16 * h), v1 = _mm256_loadu_ps(x + 16 * h + 8);
    const __m256i packed = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)),
                                              _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 16 * h),
                        _mm256_permute4x64_epi64(packed, 0xD8));  // undo the lane interleave
    sums[h] = hsum8(_mm256_add_ps(v0, v1));
  }
#else
  for (int h = 0; h < 2; ++h) {
    sums[h] = 0.f;
    for (int i = 16 * h; i < 16 * h + 16; ++i) {
      q[i] = static_cast<int16_t>(std::nearbyint(x[i] * id));
      sums[h] += x[i];
    }
  }
#endif
  return d;
}

// One 32-column block: codes into q, and per 16-column half its float sum and the int sum.
inline float quantize_block(const float* x, int8_t* q, float sums[2], int32_t isums[2]) {
#ifdef PAGEDLLM_AVX2
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float d = _mm_cvtss_f32(m4) / 127.f;
  const __m256 id = _mm256_set1_ps(d > 0.f ? 1.f / d : 0.f);
  __m256i qi[4];  // round to nearest even, as std::nearbyint in the default rounding mode
  for (int i = 0; i < 4; ++i) qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));
  const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]),
                                         _mm256_packs_epi32(qi[2], qi[3]));
  const __m256i ordered = _mm256_permutevar8x32_epi32(p16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), ordered);
  for (int h = 0; h < 2; ++h) {
    sums[h] = hsum8(_mm256_add_ps(v[2 * h], v[2 * h + 1]));
    const __m256i s = _mm256_add_epi32(qi[2 * h], qi[2 * h + 1]);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    isums[h] = _mm_cvtsi128_si32(s4);
  }
  return d;
#else
  float amax = 0.f;
  for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.f;
  const float id = d > 0.f ? 1.f / d : 0.f;
  for (int h = 0; h < 2; ++h) {
    sums[h] = 0.f;
    isums[h] = 0;
    for (int i = 16 * h; i < 16 * h + 16; ++i) {
      q[i] = static_cast<int8_t>(std::nearbyint(x[i] * id));
      sums[h] += x[i];
      isums[h] += q[i];
    }
  }
  return d;
#endif
}

// True where the block loop takes 32-column blocks in pairs (u4 codes, groups of 32): one
// 32-byte load of codes holds two blocks, whose low nibbles are columns 0-15 and high nibbles
// columns 16-31 of each; xq of each pair is stored to match, [b.0-15 | b+1.0-15 | b.16-31 |
// b+1.16-31], so a pair needs one shift, two ands and two byte multiply-adds (half the
// unpacking of one block at a time).
template <bool U4, int G>
constexpr bool kPairedBlocks = U4 && G == 32;

template <bool U4, int G>
QuantizedRows quantize_activations(const float* x, int64_t M, int64_t K) {
  const int64_t nb = K / kBlock;
  QuantizedRows r;
  r.K = K;
  r.ng = K / G;
  r.ngp = (r.ng + 7) / 8 * 8;
  (U4 ? r.q.resize(M * K) : r.q16.resize(M * K));
  r.dx.resize(M * r.ngp);
  r.sx.resize(M * r.ngp);
  r.ex.resize(M * r.ngp);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < nb; ++b) {
      float sums[2];
      int32_t isums[2];
      int8_t* qb = U4 ? r.q.data() + m * K + b * kBlock : nullptr;
      alignas(32) int8_t natural[kBlock];
      const bool paired = kPairedBlocks<U4, G> && (b | 1) < nb;
      isums[0] = isums[1] = 0;
      const float d =
          U4 ? quantize_block(x + m * K + b * kBlock, paired ? natural : qb, sums, isums)
             : quantize_block16(x + m * K + b * kBlock, r.q16.data() + m * K + b * kBlock, sums);
      if (paired) {  // see kPairedBlocks
        int8_t* pair = r.q.data() + m * K + (b & ~int64_t{1}) * kBlock;
        std::memcpy(pair + 16 * (b & 1), natural, 16);
        std::memcpy(pair + 32 + 16 * (b & 1), natural + 16, 16);
      }
      if constexpr (G == 32) {
        const int64_t g = m * r.ngp + b;
        r.dx[g] = d;
        r.sx[g] = sums[0] + sums[1];
        r.ex[g] = 8.f * (r.sx[g] - d * static_cast<float>(isums[0] + isums[1]));
      } else {
        for (int h = 0; h < 2; ++h) {
          const int64_t g = m * r.ngp + 2 * b + h;
          r.dx[g] = d;
          r.sx[g] = sums[h];
          r.ex[g] = 8.f * (sums[h] - d * static_cast<float>(isums[h]));
        }
      }
    }
  }
  return r;
}

#ifdef PAGEDLLM_AVX2
inline __m256i load_u4_block(const uint8_t* p) {
  const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(w, 4), w);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// The 8 int32 lanes of <u4 codes, xq> over one 32-column block: lane i holds columns 4i..4i+3
// of the unpacked bytes (lanes 0-3 are columns 0-15, lanes 4-7 columns 16-31).
inline __m256 block_dot_u4(__m256i w, __m256i xv) {
  const __m256i prod = _mm256_maddubs_epi16(w, xv);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, _mm256_set1_epi16(1)));
}

// [p[0] x 4, p[1] x 4]: the factors of lanes 0-3 and 4-7 when they belong to two groups.
inline __m256 two_factors(const float* p) {
  const __m256 pair =
      _mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))));
  return _mm256_permutevar8x32_ps(pair, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

// The per-lane factor scale * dx of block b from dd [ng]: one value (G 32) or two (G 16).
template <int G>
inline __m256 block_factor(const float* dd, int64_t b) {
  if constexpr (G == 32) {
    return _mm256_broadcast_ss(dd + b);
  } else {
    return two_factors(dd + 2 * b);
  }
}
#endif

#ifdef PAGEDLLM_AVX2
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

// NW weight rows against R quantized activation rows starting at m0 (a tile of NW * R sums):
//
//   out[w * R + r] = sum_b <code_b, xq_b> * scale_g dx_g  +  sum_g min_g sx_g  [+ scale_g ex_g]
//
// Per-group products are formed first, 8 groups at a time, into dd (scratch [NW * R, ng]), so
// the block loop is an unpack, a multiply-add of bytes and one FMA per block and pair. Weight
// rows share each activation block load; activation rows share each weight block unpack. Why
// the u4 centring term: codes 0..15 are not centred, so the rounding error of xq summed against
// them is ~2x that of centred codes; scale * ex per group turns it into that of (code - 8).
// Each pair's arithmetic is the same whatever the tile, so a row's result does not depend on
// its batch.
template <bool U4, int G, typename S, int NW, int R>
inline void tile_dots(const uint8_t* const* codes, const S* const* scale, const S* const* mins,
                      const QuantizedRows& qa, int64_t m0, float* dd, float* out) {
  // dd rows have stride ngp, as the activation terms (their padding is zero)
  const int64_t K = qa.K, ng = qa.ngp, nb = K / kBlock;
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
  const int8_t* xq = U4 ? qa.q.data() + m0 * K : nullptr;
  const int16_t* xq16 = U4 ? nullptr : qa.q16.data() + m0 * K;
#ifdef PAGEDLLM_AVX2
  int64_t b = 0;
  if constexpr (kPairedBlocks<U4, G>) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    for (; b + 2 <= nb; b += 2) {
      __m256i lo[NW], hi[NW];
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) {
        _mm_prefetch(reinterpret_cast<const char*>(codes[w] + ahead + b * 16), _MM_HINT_T0);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[w] + b * 16));
        lo[w] = _mm256_and_si256(v, low4);
        hi[w] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
      }
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const int8_t* xp = xq + r * K + b * kBlock;
        const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp));
        const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 32));
#pragma GCC unroll 16
        for (int w = 0; w < NW; ++w) {
          const int i = w * R + r;
          // int16 pair sums of both halves: at most 2 * 2 * 15 * 127, no saturation
          const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[w], xlo),
                                               _mm256_maddubs_epi16(hi[w], xhi));
          const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
          // lanes 0-3 are block b's columns, 4-7 block b + 1's
          acc[i] = _mm256_fmadd_ps(p, two_factors(dd + i * ng + b), acc[i]);
        }
      }
    }
  }
  for (; b < nb; ++b) {
    __m256i wv[NW];
#pragma GCC unroll 16
    for (int w = 0; w < NW; ++w) {
      _mm_prefetch(reinterpret_cast<const char*>(codes[w] + ahead + b * (U4 ? 16 : 32)),
                   _MM_HINT_T0);
    }
    if constexpr (U4) {
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w) wv[w] = load_u4_block(codes[w] + b * 16);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m256i xv =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + r * K + b * kBlock));
#pragma GCC unroll 16
        for (int w = 0; w < NW; ++w) {
          const int i = w * R + r;
          acc[i] = _mm256_fmadd_ps(block_dot_u4(wv[w], xv), block_factor<G>(dd + i * ng, b),
                                   acc[i]);
        }
      }
    } else {  // i8 codes sign-extended to int16 against int16 activations
      __m256i wh[NW][2];
#pragma GCC unroll 16
      for (int w = 0; w < NW; ++w)
        for (int h = 0; h < 2; ++h)
          wh[w][h] = _mm256_cvtepi8_epi16(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[w] + b * kBlock + 16 * h)));
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const int16_t* xp = xq16 + r * K + b * kBlock;
        const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp));
        const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 16));
#pragma GCC unroll 16
        for (int w = 0; w < NW; ++w) {
          const int i = w * R + r;
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
          isum += c * (U4 ? xq[r * K + k] : xq16[r * K + k]);
        }
        total += static_cast<float>(isum) * dd[i * ng + k0 / G];
      }
      out[i] = total + tail[i];
    }
  }
#endif
}

// Tiles of 4 weight rows x 1 activation row, 2 x 2, or 1 x R (R = 3, 4): 4 independent
// accumulators in flight, enough to hide the FMA latency.
template <bool U4, int G, typename S>
void gemv_tile(const uint8_t* const* c, const S* const* s, const S* const* z,
               const QuantizedRows& qa, int64_t m0, int64_t nw, int64_t r, float* dd,
               float* part) {
  if (nw == 4) return tile_dots<U4, G, S, 4, 1>(c, s, z, qa, m0, dd, part);
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
  // quads of weight rows; the weight rows of a tile: 4 with one activation row, 2 with two,
  // else 1 (a tile's activation rows: R = 4 / weight rows, or the 3 or 4 left)
  at::parallel_for(0, (N + 3) / 4, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> dd(4 * qa.ngp);
    float part[4];
    for (int64_t quad = begin; quad < end; ++quad) {
      for (int64_t m0 = 0; m0 < M;) {
        const int64_t left = M - m0;
        const int64_t r = left == 1 ? 1 : (left == 2 ? 2 : std::min<int64_t>(4, left));
        for (int64_t n = 4 * quad; n < std::min(N, 4 * quad + 4);) {
          const int64_t avail = std::min(N, 4 * quad + 4) - n;
          const int64_t nw = (r == 1 && avail == 4) ? 4 : ((r == 2 && avail >= 2) ? 2 : 1);
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

// 13..32 rows: each group of 4 weight rows is dequantized into a per-thread buffer that stays in
// L1 and multiplied by every activation row at once (no panel written to and re-read from the
// last-level cache, no ATen GEMM, which is slow at these row counts).
template <bool U4, int G, typename S>
void gemv_dequantized(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                      const at::Tensor& mins, at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  const S* sp = scales.data_ptr<S>();
  const S* mp = mins.data_ptr<S>();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, (N + 3) / 4, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(4 * K);
    for (int64_t quad = begin; quad < end; ++quad) {
      const int64_t n = quad * 4, nw = std::min<int64_t>(4, N - n);
      dequantize_rows<U4, G, S>(cp, sp, mp, K, n, n + nw, buf.data());
      const float* w[4] = {buf.data(), buf.data() + K, buf.data() + 2 * K, buf.data() + 3 * K};
      float part[8];
      for (int64_t m0 = 0; m0 < M; m0 += 2) {
        const int64_t r = std::min<int64_t>(2, M - m0);
        for (int64_t i0 = 0; i0 < nw; i0 += (nw == 4 ? 4 : 1)) {
          const int64_t wn = nw == 4 ? 4 : 1;
          const float* wi[4] = {w[i0], w[std::min<int64_t>(i0 + 1, 3)],
                                w[std::min<int64_t>(i0 + 2, 3)], w[std::min<int64_t>(i0 + 3, 3)]};
          if (wn == 4) {
            r == 2 ? dots<4, 2>(wi, xp + m0 * K, K, part) : dots<4, 1>(wi, xp + m0 * K, K, part);
          } else {
            r == 2 ? dots<1, 2>(wi, xp + m0 * K, K, part) : dots<1, 1>(wi, xp + m0 * K, K, part);
          }
          for (int64_t a = 0; a < wn; ++a)
            for (int64_t b = 0; b < r; ++b) op[(m0 + b) * N + n + i0 + a] = part[a * r + b];
        }
      }
    }
  });
}

template <bool U4, int G, typename S>
void gemm_panels(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                 const at::Tensor& mins, at::Tensor& out) {
  const int64_t K = x.size(1), N = out.size(1);
  // Panels of ~1M weights (4 MB of float) stay in the last-level cache between the two passes.
  const int64_t panel = std::max<int64_t>(64, ((1 << 20) / K) / 64 * 64);
  at::Tensor w = at::empty({std::min(panel, N), K}, x.options());
  const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  for (int64_t n0 = 0; n0 < N; n0 += panel) {
    const int64_t n1 = std::min(N, n0 + panel);
    float* wp = w.data_ptr<float>();
    at::parallel_for(n0, n1, 16, [&](int64_t b, int64_t e) {
      dequantize_rows<U4, G, S>(cp, scales.data_ptr<S>(), mins.data_ptr<S>(), K, b, e,
                             wp + (b - n0) * K);
    });
    const at::Tensor w_panel = w.narrow(0, 0, n1 - n0);
    const at::Tensor y = at::mm(x, w_panel.t());
    if (n0 == 0 && n1 == N) {
      out.copy_(y);
    } else {
      out.narrow(1, n0, n1 - n0).copy_(y);
    }
  }
}

template <bool U4, int G, typename S>
at::Tensor run(const at::Tensor& x_in, const at::Tensor& codes, const at::Tensor& scales,
               const at::Tensor& mins, int64_t gemv_max_rows) {
  TORCH_CHECK(x_in.dim() == 2, "x must be [M, K]");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = codes.size(0);
  TORCH_CHECK(K % kBlock == 0, "in_features must be a multiple of 32, got ", K);
  TORCH_CHECK(codes.size(1) == (U4 ? K / 2 : K), "codes do not match in_features");
  TORCH_CHECK(scales.size(0) == N && scales.size(1) == K / G && mins.sizes() == scales.sizes());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M <= gemv_max_rows) {
    gemv_rows<U4, G, S>(x, codes, scales, mins, out);
  } else if (M <= kDequantizedGemvMaxRows) {
    gemv_dequantized<U4, G, S>(x, codes, scales, mins, out);
  } else {
    gemm_panels<U4, G, S>(x, codes, scales, mins, out);
  }
  return out.to(x_in.scalar_type());
}

template <typename S>
at::Tensor dispatch_layout(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                           const at::Tensor& mins, int64_t group_size, bool u4,
                           int64_t gemv_max_rows) {
  if (u4) {
    return group_size == 32 ? run<true, 32, S>(x, codes, scales, mins, gemv_max_rows)
                            : run<true, 16, S>(x, codes, scales, mins, gemv_max_rows);
  }
  return group_size == 32 ? run<false, 32, S>(x, codes, scales, mins, gemv_max_rows)
                          : run<false, 16, S>(x, codes, scales, mins, gemv_max_rows);
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
                        const at::Tensor& mins, int64_t group_size, bool u4,
                        int64_t gemv_max_rows) {
  TORCH_CHECK(group_size == 16 || group_size == 32, "group size must be 16 or 32");
  TORCH_CHECK(codes.is_contiguous() && scales.is_contiguous() && mins.is_contiguous());
  TORCH_CHECK(scales.scalar_type() == mins.scalar_type(), "scales and mins of one dtype");
  if (scales.scalar_type() == at::kHalf) {
    return dispatch_layout<at::Half>(x, codes, scales, mins, group_size, u4, gemv_max_rows);
  }
  TORCH_CHECK(scales.scalar_type() == at::kFloat, "scales must be float32 or float16");
  return dispatch_layout<float>(x, codes, scales, mins, group_size, u4, gemv_max_rows);
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
        "bool u4, int gemv_max_rows) -> Tensor");
  m.def("quant_gather_rows(Tensor ids, Tensor codes, Tensor scales, Tensor mins, "
        "int group_size, bool u4, int in_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("quant_linear", &pagedllm::quant_linear);
  m.impl("quant_gather_rows", &pagedllm::quant_gather_rows);
}
