// The quantized GEMV: tiles of weight rows x quantized activation rows (see quant_linear.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "activations.h"
#include "block_terms.h"
#include "common.h"

namespace pagedllm::quant {
namespace {

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
  const int64_t ahead = kPrefetchRows * (U4 ? K / 2 : K);  // bytes
  float tail[NW * R];
  vec::F8 acc[NW * R];
#pragma GCC unroll 16
  for (int i = 0; i < NW * R; ++i) {
    tail[i] = 0.f;
    acc[i] = vec::zero();
  }
  // (local restrict pointers: stores to dd must not make the compiler reload the vectors')
  const float* __restrict dx = qa.dx.data() + m0 * ng;
  const float* __restrict sx = qa.sx.data() + m0 * ng;
  const float* __restrict ex = qa.ex.data() + m0 * ng;
  // the last groups (fewer than 8) with masked loads, which read nothing past the row;
  // an odd count of fp16 values (no 16-bit masked load) is left to the scalar loop
  const int64_t rem = qa.ng % 8;
  const int64_t vector_end = qa.ng - ((rem & 1) && sizeof(S) == 2 ? rem : 0);
  int64_t g = 0;
  for (; g < vector_end; g += 8) {
    const int64_t n = std::min<int64_t>(8, qa.ng - g);
#pragma GCC unroll 16
    for (int w = 0; w < NW; ++w) {
      const vec::F8 s8 = n == 8 ? vec::load(scale[w] + g) : vec::load_first(scale[w] + g, n);
      const vec::F8 z8 = n == 8 ? vec::load(mins[w] + g) : vec::load_first(mins[w] + g, n);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const int64_t o = r * ng + g;
        const int i = w * R + r;
        vec::store(dd + i * ng + g, s8 * vec::load(dx + o));
        acc[i] = vec::fma(z8, vec::load(sx + o), acc[i]);
        if constexpr (U4) acc[i] = vec::fma(s8, vec::load(ex + o), acc[i]);
      }
    }
  }
  for (; g < qa.ng; ++g) {
#pragma GCC unroll 16
    for (int w = 0; w < NW; ++w) {
      const float s = to_float(scale[w][g]), z = to_float(mins[w][g]);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const int64_t o = (m0 + r) * ng + g;
        const int i = w * R + r;
        dd[i * ng + g] = s * qa.dx[o];
        // (the fused multiply-add a SIMD build contracts this to: the portable build matches)
        tail[i] += std::fma(z, qa.sx[o], U4 ? s * qa.ex[o] : 0.f);
      }
    }
  }
  block_terms<U4, G, NW, R>(codes, qa.q.data() + m0 * K, K, dd, ng, ahead, acc, tail, out);
}

// Tiles of 4 weight rows x 1 activation row, 2 x 2, or 1 x R (R = 3, 4); where kMaxTileSums
// allows (the 512-bit loop) also 4 x 4 and 4 x 3 (2 x 4, 2 x 3 where fewer than 4 weight rows
// are left).
template <bool U4, int G, typename S>
void gemv_tile(const uint8_t* const* c, const S* const* s, const S* const* z,
               const QuantizedRows& qa, int64_t m0, int64_t nw, int64_t r, float* dd,
               float* part) {
  if (nw == 4 && r == 1) return tile_dots<U4, G, S, 4, 1>(c, s, z, qa, m0, dd, part);
  if constexpr (kMaxTileSums >= 16) {
    if (nw == 4 && r == 4) return tile_dots<U4, G, S, 4, 4>(c, s, z, qa, m0, dd, part);
    if (nw == 4 && r == 3) return tile_dots<U4, G, S, 4, 3>(c, s, z, qa, m0, dd, part);
    if (nw == 2 && r == 4) return tile_dots<U4, G, S, 2, 4>(c, s, z, qa, m0, dd, part);
    if (nw == 2 && r == 3) return tile_dots<U4, G, S, 2, 3>(c, s, z, qa, m0, dd, part);
  }
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

}  // namespace
}  // namespace pagedllm::quant
