// Weight-only quantized linear layers for CPUs: y[M, N] = x[M, K] W[N, K]^T with W held as
// integer codes + a float scale and minimum per group of 16 or 32 input columns:
//
//     W[n, k] = scale[n, k / G] * code[n, k] + min[n, k / G]
//
// Two code layouts (every GGUF type, AWQ/GPTQ, int8/int4 at load is repacked into one of them):
//   u4: codes 0..15, 16 bytes per 32 columns; byte j holds column j (low nibble) and column
//       j + 16 (high nibble) — ggml's Q4_0/Q4_1 order, so those blocks repack byte for byte.
//   i8: codes -128..127, one byte per column.
//
// Few rows (decode): x is quantized per 32 columns to int8 with a float scale (as llama.cpp
// does) and each group is an integer dot product (AVX2 maddubs), scaled once per group; the
// min term uses the exact float sum of x over the group. Many rows (prefill, large batches):
// panels of W are dequantized to float and multiplied by ATen's GEMM, where the dequantization
// is amortized over the rows.
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

struct QuantizedRows {
  // x quantized per 32 columns: q [M, K] int8, d [M, K/32] scale; per 16 columns: s16 the float
  // sum of x and e16 its rounding error sum(x) - d * sum(q) [M, K/16].
  std::vector<int8_t> q;
  std::vector<float> d, s16, e16;
  // Per 32-column block, 8 lanes: lanes 0-3 hold s16 / 4 of the first 16 columns, lanes 4-7
  // that of the next 16 (likewise 8 * e16 / 4): the lane layout of the integer dot products,
  // so min and centring terms accumulate in the same vector [M, K/32, 8].
  std::vector<float> lane_s, lane_e;
};

QuantizedRows quantize_activations(const float* x, int64_t M, int64_t K) {
  const int64_t nb = K / kBlock;
  QuantizedRows r;
  r.q.resize(M * K);
  r.d.resize(M * nb);
  r.s16.resize(M * nb * 2);
  r.e16.resize(M * nb * 2);
  r.lane_s.resize(M * nb * 8);
  r.lane_e.resize(M * nb * 8);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + m * K + b * kBlock;
      float amax = 0.f;
      for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.f;
      const float id = d > 0.f ? 1.f / d : 0.f;
      int8_t* qb = r.q.data() + m * K + b * kBlock;
      for (int half = 0; half < 2; ++half) {
        float sum = 0.f;
        int32_t isum = 0;
        for (int i = half * 16; i < half * 16 + 16; ++i) {
          qb[i] = static_cast<int8_t>(std::nearbyint(xb[i] * id));
          sum += xb[i];
          isum += qb[i];
        }
        r.s16[(m * nb + b) * 2 + half] = sum;
        r.e16[(m * nb + b) * 2 + half] = sum - d * static_cast<float>(isum);
      }
      r.d[m * nb + b] = d;
      for (int lane = 0; lane < 8; ++lane) {
        const int64_t half = (m * nb + b) * 2 + lane / 4;
        r.lane_s[(m * nb + b) * 8 + lane] = r.s16[half] / 4.f;
        r.lane_e[(m * nb + b) * 8 + lane] = 2.f * r.e16[half];
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

// Per-lane weight scale of one 32-column block: lanes 0-3 cover columns 0-15, 4-7 columns 16-31.
template <int G>
inline __m256 block_scale(const float* scale, int64_t b) {
  if constexpr (G == 32) {
    return _mm256_set1_ps(scale[b]);
  } else {
    return _mm256_setr_ps(scale[2 * b], scale[2 * b], scale[2 * b], scale[2 * b],
                          scale[2 * b + 1], scale[2 * b + 1], scale[2 * b + 1], scale[2 * b + 1]);
  }
}
#endif

// NW (1..2) weight rows against R (1..4) quantized activation rows starting at m0:
// out[w * R + r] = sum over 32-column blocks of scale * (dx * <code, xq> [+ u4 centring]) +
// min * sum(x). Unpacking each weight block once for R rows, and loading each activation block
// once for NW weight rows, is what keeps the loop near its arithmetic (measured: 2 weight rows
// per pass, ~1.4x over 1).
template <bool U4, int G, int NW, int R>
inline void dot_rows(const uint8_t* const* codes, const float* const* scale,
                     const float* const* mins, const QuantizedRows& qa, int64_t m0, int64_t K,
                     float* out) {
  const int64_t nb = K / kBlock;
#ifdef PAGEDLLM_AVX2
  __m256 acc[NW][R];
  for (int w = 0; w < NW; ++w)
    for (int r = 0; r < R; ++r) acc[w][r] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wv[NW], aw[NW];
    __m256 ws[NW], wm[NW];
    for (int w = 0; w < NW; ++w) {
      if constexpr (U4) {
        wv[w] = load_u4_block(codes[w] + b * 16);
      } else {
        wv[w] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[w] + b * kBlock));
        aw[w] = _mm256_sign_epi8(wv[w], wv[w]);
      }
      ws[w] = block_scale<G>(scale[w], b);
      wm[w] = block_scale<G>(mins[w], b);
    }
    for (int r = 0; r < R; ++r) {
      const int64_t m = m0 + r;
      const int64_t mb = m * nb + b;
      const __m256i xv =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qa.q.data() + m * K + b * kBlock));
      const __m256 dx = _mm256_set1_ps(qa.d[mb]);
      const __m256 ls = _mm256_loadu_ps(qa.lane_s.data() + mb * 8);
      __m256 le;
      if constexpr (U4) le = _mm256_loadu_ps(qa.lane_e.data() + mb * 8);
      for (int w = 0; w < NW; ++w) {
        const __m256i prod = U4 ? _mm256_maddubs_epi16(wv[w], xv)
                                : _mm256_maddubs_epi16(aw[w], _mm256_sign_epi8(xv, wv[w]));
        const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
        const __m256 pf = U4 ? _mm256_fmadd_ps(p, dx, le) : _mm256_mul_ps(p, dx);
        acc[w][r] = _mm256_fmadd_ps(wm[w], ls, _mm256_fmadd_ps(ws[w], pf, acc[w][r]));
      }
    }
  }
  for (int w = 0; w < NW; ++w)
    for (int r = 0; r < R; ++r) out[w * R + r] = hsum8(acc[w][r]);
#else
  for (int w = 0; w < NW; ++w) {
    for (int r = 0; r < R; ++r) {
      const int64_t m = m0 + r;
      float total = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        for (int half = 0; half < 2; ++half) {
          int32_t isum = 0;
          for (int i = half * 16; i < half * 16 + 16; ++i) {
            int c;
            if constexpr (U4) {
              const uint8_t byte = codes[w][b * 16 + (i & 15)];
              c = i < 16 ? (byte & 0x0F) : (byte >> 4);
            } else {
              c = static_cast<int8_t>(codes[w][b * kBlock + i]);
            }
            isum += c * qa.q[m * K + b * kBlock + i];
          }
          const float s = G == 32 ? scale[w][b] : scale[w][2 * b + half];
          const float z = G == 32 ? mins[w][b] : mins[w][2 * b + half];
          const int64_t h = (m * nb + b) * 2 + half;
          total += s * qa.d[m * nb + b] * static_cast<float>(isum) + z * qa.s16[h];
          if constexpr (U4) total += 8.f * s * qa.e16[h];
        }
      }
      out[w * R + r] = total;
    }
  }
#endif
}

template <bool U4, int G, int NW>
inline void dot_tile(const uint8_t* const* c, const float* const* sc, const float* const* mn,
                     const QuantizedRows& qa, int64_t m0, int64_t r, int64_t K, float* part) {
  switch (r) {
    case 4: dot_rows<U4, G, NW, 4>(c, sc, mn, qa, m0, K, part); break;
    case 3: dot_rows<U4, G, NW, 3>(c, sc, mn, qa, m0, K, part); break;
    case 2: dot_rows<U4, G, NW, 2>(c, sc, mn, qa, m0, K, part); break;
    default: dot_rows<U4, G, NW, 1>(c, sc, mn, qa, m0, K, part); break;
  }
}

// Why the u4 centring term: codes 0..15 are not centred, so the rounding error of xq, summed
// against them, is ~2x that of centred codes. Adding 8 * scale * (sum(x) - dx * sum(xq)) per
// group turns the error into that of (code - 8) at the cost of one FMA per block.

template <bool U4, int G>
void gemv_rows(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
               const at::Tensor& mins, at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  const QuantizedRows qa = quantize_activations(x.data_ptr<float>(), M, K);
  const int64_t groups = K / G;
  const int64_t row_bytes = U4 ? K / 2 : K;
  const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  const float* sp = scales.data_ptr<float>();
  const float* mp = mins.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // pairs of weight rows: [begin, end) in pairs, a last single row if N is odd
  at::parallel_for(0, (N + 1) / 2, 32, [&](int64_t begin, int64_t end) {
    float part[8];
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t n = 2 * pair;
      const int64_t nw = std::min<int64_t>(2, N - n);
      const uint8_t* c[2] = {cp + n * row_bytes, cp + (n + nw - 1) * row_bytes};
      const float* sc[2] = {sp + n * groups, sp + (n + nw - 1) * groups};
      const float* mn[2] = {mp + n * groups, mp + (n + nw - 1) * groups};
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int64_t r = std::min<int64_t>(4, M - m0);
        if (nw == 2) {
          dot_tile<U4, G, 2>(c, sc, mn, qa, m0, r, K, part);
        } else {
          dot_tile<U4, G, 1>(c, sc, mn, qa, m0, r, K, part);
        }
        for (int64_t w = 0; w < nw; ++w)
          for (int64_t i = 0; i < r; ++i) op[(m0 + i) * N + n + w] = part[w * r + i];
      }
    }
  });
}

// Rows [n0, n1) of W dequantized to float into dst [n1 - n0, K].
template <bool U4, int G>
void dequantize_rows(const uint8_t* codes, const float* scales, const float* mins, int64_t K,
                     int64_t n0, int64_t n1, float* dst) {
  const int64_t groups = K / G;
  const int64_t row_bytes = U4 ? K / 2 : K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* c = codes + n * row_bytes;
    const float* s = scales + n * groups;
    const float* z = mins + n * groups;
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
        const __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), _mm256_set1_ps(s[g]),
                                         _mm256_set1_ps(z[g]));
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
      d[k] = s[k / G] * static_cast<float>(code) + z[k / G];
    }
#endif
  }
}

// 13..32 rows: each group of 4 weight rows is dequantized into a per-thread buffer that stays in
// L1 and multiplied by every activation row at once (no panel written to and re-read from the
// last-level cache, no ATen GEMM, which is slow at these row counts).
template <bool U4, int G>
void gemv_dequantized(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                      const at::Tensor& mins, at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  const float* sp = scales.data_ptr<float>();
  const float* mp = mins.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, (N + 3) / 4, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(4 * K);
    for (int64_t quad = begin; quad < end; ++quad) {
      const int64_t n = quad * 4, nw = std::min<int64_t>(4, N - n);
      dequantize_rows<U4, G>(cp, sp, mp, K, n, n + nw, buf.data());
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

template <bool U4, int G>
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
      dequantize_rows<U4, G>(cp, scales.data_ptr<float>(), mins.data_ptr<float>(), K, b, e,
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

template <bool U4, int G>
at::Tensor run(const at::Tensor& x_in, const at::Tensor& codes, const at::Tensor& scales,
               const at::Tensor& mins, int64_t gemv_max_rows) {
  TORCH_CHECK(x_in.dim() == 2, "x must be [M, K]");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = codes.size(0);
  TORCH_CHECK(K % kBlock == 0, "in_features must be a multiple of 32, got ", K);
  TORCH_CHECK(codes.size(1) == (U4 ? K / 2 : K), "codes do not match in_features");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && mins.scalar_type() == at::kFloat);
  TORCH_CHECK(scales.size(0) == N && scales.size(1) == K / G && mins.sizes() == scales.sizes());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M <= gemv_max_rows) {
    gemv_rows<U4, G>(x, codes, scales, mins, out);
  } else if (M <= kDequantizedGemvMaxRows) {
    gemv_dequantized<U4, G>(x, codes, scales, mins, out);
  } else {
    gemm_panels<U4, G>(x, codes, scales, mins, out);
  }
  return out.to(x_in.scalar_type());
}

}  // namespace

namespace pagedllm {

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                        const at::Tensor& mins, int64_t group_size, bool u4,
                        int64_t gemv_max_rows) {
  TORCH_CHECK(group_size == 16 || group_size == 32, "group size must be 16 or 32");
  TORCH_CHECK(codes.is_contiguous() && scales.is_contiguous() && mins.is_contiguous());
  if (u4) {
    return group_size == 32 ? run<true, 32>(x, codes, scales, mins, gemv_max_rows)
                            : run<true, 16>(x, codes, scales, mins, gemv_max_rows);
  }
  return group_size == 32 ? run<false, 32>(x, codes, scales, mins, gemv_max_rows)
                          : run<false, 16>(x, codes, scales, mins, gemv_max_rows);
}

// Rows `ids` of W as float [len(ids), K] (embedding lookups from a quantized table).
at::Tensor quant_gather_rows(const at::Tensor& ids, const at::Tensor& codes,
                             const at::Tensor& scales, const at::Tensor& mins,
                             int64_t group_size, bool u4, int64_t in_features) {
  const at::Tensor idx = ids.to(at::kLong).contiguous();
  const int64_t T = idx.numel(), K = in_features;
  at::Tensor out = at::empty({T, K}, scales.options());
  const int64_t* ip = idx.data_ptr<int64_t>();
  const uint8_t* cp = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = ip[t];
    TORCH_CHECK(n >= 0 && n < codes.size(0), "row id out of range");
    float* dst = out.data_ptr<float>() + t * K;
    const float* sp = scales.data_ptr<float>();
    const float* mp = mins.data_ptr<float>();
    if (u4) {
      group_size == 32 ? dequantize_rows<true, 32>(cp, sp, mp, K, n, n + 1, dst)
                       : dequantize_rows<true, 16>(cp, sp, mp, K, n, n + 1, dst);
    } else {
      group_size == 32 ? dequantize_rows<false, 32>(cp, sp, mp, K, n, n + 1, dst)
                       : dequantize_rows<false, 16>(cp, sp, mp, K, n, n + 1, dst);
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
