// y[M, N] = x[M, K] W[N, K]^T (+ bias) in float32 (W stored as float32, or as bfloat16 /
// float16 and widened exactly on load, which halves the bytes decode reads), our own GEMV over W for every row count:
// 1-4 rows as several sequential streams of weight rows per thread (stream_gemv), more four
// weight rows at a time against three activation rows per pass (tile_gemv). Every output is the
// same 8-lane dot product whatever the tile, so a row's result does not depend on the batch it
// is in (batch invariance: ATen's GEMM, which took more than 256 rows before, sums in an order
// of its own, so a long prefill's rows differed in the last bits from the same rows in chunks).
// With several passes over four weight rows, the loop is compute-bound while the rows are in L1,
// and the next four rows are prefetched a slice per pass: without that, each new quad started
// on a DRAM miss (the hardware prefetcher does not follow 4 streams of 2.3 KB across rows).
// Measured (2 threads, 30 SmolLM2 layers' fp32 weights from DRAM, GFLOP/s): 32 rows 4x2 tiles
// without prefetch vs now ~1.35x; against ATen (MKL) 33 rows 57 vs 118, 128 rows 93 vs 124,
// 256 rows 119 vs 145, 512 rows 140 vs 124. Few rows: stream_gemv below. AVX-512 builds take 8
// rows and more through dense_pairs512.h's row-pair GEMM instead (two activation rows per 512-bit
// register, the same per-output order, so the same bits; SmolLM2's shapes, 1 thread, GMAC/s of
// thread CPU time: fp32 32 rows 60 -> 80, 512 rows 63 -> 94; bf16 weights 58 -> 82, 59 -> 95).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "dense_pairs512.h"
#include "dense_tile.h"
#include "ops.h"
#include "vec/vec.h"

namespace {

// Activation rows swept per pass over a thread's weight rows: their K floats each stay in L2
// (96 x 1536 x 4 B = 576 KiB of the 1 MiB here) while the weights stream once per block.
constexpr int64_t kRowBlock = 96;

template <int R, typename W>
void gemv_tile(const W* wp, const float* xp, int64_t K, int64_t N, int64_t n, float* op,
               int64_t m0) {
  float part[4 * R];
  if (n + 4 <= N) {
    const W* w[4] = {wp + n * K, wp + (n + 1) * K, wp + (n + 2) * K, wp + (n + 3) * K};
    dots<4, R>(w, xp + m0 * K, K, part);
    for (int i = 0; i < 4; ++i)
      for (int r = 0; r < R; ++r) op[(m0 + r) * N + n + i] = part[i * R + r];
  } else {
    for (int64_t i = n; i < N; ++i) {
      const W* w[1] = {wp + i * K};
      dots<1, R>(w, xp + m0 * K, K, part);
      for (int r = 0; r < R; ++r) op[(m0 + r) * N + i] = part[r];
    }
  }
}

// Activation rows in the pass starting at m0: threes, ending on two twos rather than a single
// row (4 rows: 2 + 2, 7: 3 + 2 + 2), since a one-row pass costs nearly as much as a full one.
inline int64_t pass_rows(int64_t left) {
  return left >= 5 || left == 3 ? 3 : std::min<int64_t>(left, 2);
}

inline int64_t pass_count(int64_t M) {
  int64_t passes = 0;
  for (int64_t m0 = 0; m0 < M; m0 += pass_rows(M - m0)) ++passes;
  return passes;
}

// Up to kStreamMaxRows activation rows the GEMV is bound by reading W. Each thread cuts its rows
// into S equal parts and walks them side by side, one weight row of each part per step: each
// output is still one FMA chain (the same sum as in tile_gemv), but S independent chains run at
// once (one alone caps a thread at ~24 GB/s here, a 4-cycle FMA per 32 bytes), and each part is
// one sequential stream, which the hardware prefetcher serves best left alone. Kernel A/B over
// SmolLM2's 121 matrices, 1 row: one part with software prefetch 18-21 GB/s; two parts with
// prefetch no better; two without 1.2x; eight without 1.12x more (~24-28 GB/s, torch.sum's
// rate). Adjacent rows as the parts (2.3 KB apart) measured slower than one stream.
constexpr int64_t kStreamMaxRows = 4;

// Parts per thread for R activation rows: S x R accumulators and R activation vectors within
// the 16 vector registers.
constexpr int stream_parts(int R) { return R == 1 ? 8 : R <= 3 ? 4 : 2; }

template <int R, typename W>
void stream_rows(const W* wp, const float* xp, int64_t K, int64_t N, float* op, int64_t begin,
                 int64_t end) {
  constexpr int S = stream_parts(R);
  const int64_t part_rows = (end - begin) / S;
  float part[S * R];
  for (int64_t i = 0; i < part_rows; ++i) {
    int64_t n[S];
    const W* w[S];
    for (int s = 0; s < S; ++s) {
      n[s] = begin + s * part_rows + i;
      w[s] = wp + n[s] * K;
    }
    dots<S, R>(w, xp, K, part);
    for (int s = 0; s < S; ++s)
      for (int r = 0; r < R; ++r) op[r * N + n[s]] = part[s * R + r];
  }
  for (int64_t n = begin + S * part_rows; n < end; ++n) {  // the rows left over
    const W* w[1] = {wp + n * K};
    dots<1, R>(w, xp, K, part);
    for (int r = 0; r < R; ++r) op[r * N + n] = part[r];
  }
}

template <int R, typename W>
void stream_gemv(const W* wp, const float* xp, int64_t K, int64_t N, float* op) {
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    stream_rows<R, W>(wp, xp, K, N, op, begin, end);
  });
}

// More rows: four weight rows at a time against up to three activation rows per pass.
template <typename W>
void tile_gemv(const W* wp, const float* xp, int64_t K, int64_t N, int64_t M, float* op) {
  // Bytes of the next quad prefetched per pass (whole cache lines); none for a single pass.
  const int64_t quad_bytes = 4 * K * static_cast<int64_t>(sizeof(W));
  at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row0 = 0; row0 < M; row0 += kRowBlock) {
      const int64_t row_end = std::min(M, row0 + kRowBlock);
      const int64_t passes = pass_count(row_end - row0);
      const int64_t slice = passes > 1 ? ((quad_bytes / 64 + passes - 1) / passes) * 64 : 0;
      for (int64_t quad = begin; quad < end; ++quad) {
        const int64_t n = quad * 4;
        const char* next = reinterpret_cast<const char*>(wp + (n + 4) * K);
        const int64_t next_bytes = n + 8 <= N ? quad_bytes : 0;
        int64_t fetched = 0;
        for (int64_t m0 = row0; m0 < row_end;) {
          for (const int64_t stop = std::min(fetched + slice, next_bytes); fetched < stop;
               fetched += 64)
            pagedllm::vec::prefetch(next + fetched);
          const int64_t rows = pass_rows(row_end - m0);
          if (rows == 3) {
            gemv_tile<3, W>(wp, xp, K, N, n, op, m0);
          } else if (rows == 2) {
            gemv_tile<2, W>(wp, xp, K, N, n, op, m0);
          } else {
            gemv_tile<1, W>(wp, xp, K, N, n, op, m0);
          }
          m0 += rows;
        }
      }
    }
  });
}

#ifdef PAGEDLLM_VEC_512
// More rows on AVX-512: dense_pairs512.h's tiles of kPanelRows W rows x kTilePairs activation
// pairs, the same loop nest as tile_gemv (a thread's W rows in panels, each swept against a row
// block of activations kept in L2 while the next panel is prefetched a slice per tile).
template <int NW, typename W>
void pair_panel(const float* const* w, const W* const* tail_w, const float* pairs, const float* xp,
                int64_t K, int64_t N, int64_t M, int64_t n, int64_t pair0, int64_t pair_end,
                const char* next, int64_t next_bytes, float* op) {
  const int64_t K8 = K / 8;
  const int64_t tiles = pass_count(pair_end - pair0);
  const int64_t slice = ((next_bytes / 64 + tiles - 1) / tiles) * 64;
  int64_t fetched = 0;
  float part[NW * 2 * kTilePairs];
  static_assert(kTilePairs == 3, "pass_rows splits pairs in threes and twos");
  for (int64_t p0 = pair0; p0 < pair_end;) {
    for (const int64_t stop = std::min(fetched + slice, next_bytes); fetched < stop; fetched += 64)
      pagedllm::vec::prefetch(next + fetched);
    const int P = static_cast<int>(pass_rows(pair_end - p0));  // (of pairs here)
    const float* x = pairs + p0 * K8 * 16;
    switch (P) {
      case 3: pair_dots<NW, 3>(w, x, K8, part); break;
      case 2: pair_dots<NW, 2>(w, x, K8, part); break;
      default: pair_dots<NW, 1>(w, x, K8, part); break;
    }
    for (int i = 0; i < NW; ++i)
      for (int r = 0; r < 2 * P; ++r) {
        const int64_t m = 2 * p0 + r;
        if (m >= M) break;
        float sum = part[i * 2 * P + r];
        for (int64_t k = K8 * 8; k < K; ++k)  // dense_tile.h's tail, one fused FMA at a time
          sum = std::fma(pagedllm::vec::to_f32(tail_w[i][k]), xp[m * K + k], sum);
        op[m * N + n + i] = sum;
      }
    p0 += P;
  }
}

// From 8 rows (5-7 rows: W's bytes bound both, and tile_gemv read them faster, 1.2x at 5 rows;
// 8 rows 1.0-1.13x here, 32 rows 1.33-1.43x, 128-512 rows 1.42-1.6x, kernel alone at 1 thread).
constexpr int64_t kPairMinRows = 8;

template <typename W>
void pair_gemm(const W* wp, const float* xp, int64_t K, int64_t N, int64_t M, float* op) {
  static_assert(kRowBlock % 2 == 0, "row blocks of whole pairs");
  const int64_t K8 = K / 8;
  // (at::empty: 64-byte aligned, for the pair loads)
  at::Tensor pairs_buf = at::empty({(M + 1) / 2 * K8 * 16}, at::kFloat);
  float* pairs = pairs_buf.data_ptr<float>();
  at::parallel_for(0, (M + 1) / 2, 16, [&](int64_t begin, int64_t end) {
    pack_pairs(xp, K, 2 * begin, std::min(M, 2 * end) - 2 * begin, pairs + begin * K8 * 16);
  });
  constexpr bool kWiden = !std::is_same_v<W, float>;
  const int64_t panel_bytes = kPanelRows * K * static_cast<int64_t>(sizeof(W));
  at::parallel_for(0, (N + kPanelRows - 1) / kPanelRows, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> widened(kWiden ? kPanelRows * K : 0);
    for (int64_t row0 = 0; row0 < M; row0 += kRowBlock) {
      const int64_t pair0 = row0 / 2, pair_end = (std::min(M, row0 + kRowBlock) + 1) / 2;
      for (int64_t panel = begin; panel < end; ++panel) {
        const int64_t n = panel * kPanelRows, rows = std::min<int64_t>(kPanelRows, N - n);
        const float* w[kPanelRows];
        const W* tail_w[kPanelRows];
        for (int64_t i = 0; i < rows; ++i) {
          tail_w[i] = wp + (n + i) * K;
          if constexpr (kWiden) {
            float* dst = widened.data() + i * K;
            for (int64_t k = 0; k < K8 * 8; k += 8)
              pagedllm::vec::store(dst + k, pagedllm::vec::load(tail_w[i] + k));
            w[i] = dst;
          } else {
            w[i] = tail_w[i];
          }
        }
        const char* next = reinterpret_cast<const char*>(wp + (n + kPanelRows) * K);
        const int64_t next_bytes = n + 2 * kPanelRows <= N ? panel_bytes : 0;
        if (rows == kPanelRows) {
          pair_panel<kPanelRows, W>(w, tail_w, pairs, xp, K, N, M, n, pair0, pair_end, next,
                                    next_bytes, op);
        } else {
          for (int64_t i = 0; i < rows; ++i)
            pair_panel<1, W>(w + i, tail_w + i, pairs, xp, K, N, M, n + i, pair0, pair_end,
                             nullptr, 0, op);
        }
      }
    }
  });
}
#endif  // PAGEDLLM_VEC_512

}  // namespace

namespace {

template <typename W>
void dense_gemv(const float* x, int64_t M, int64_t K, const W* w, int64_t N, float* out) {
  static_assert(kStreamMaxRows == 4, "one stream_gemv case per row count");
  switch (M) {
    case 1: stream_gemv<1>(w, x, K, N, out); break;
    case 2: stream_gemv<2>(w, x, K, N, out); break;
    case 3: stream_gemv<3>(w, x, K, N, out); break;
    case 4: stream_gemv<4>(w, x, K, N, out); break;
    default:
#ifdef PAGEDLLM_VEC_512
      if (M >= kPairMinRows) {
        pair_gemm(w, x, K, N, M, out);
        break;
      }
#endif
      tile_gemv(w, x, K, N, M, out);
      break;
  }
}

}  // namespace

namespace pagedllm {

at::Tensor dense_linear_into(const at::Tensor& x_in, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::Tensor& out) {
  TORCH_CHECK(x_in.dim() == 2 && weight.dim() == 2 && x_in.size(1) == weight.size(1));
  const at::ScalarType wt = weight.scalar_type();
  TORCH_CHECK(x_in.scalar_type() == at::kFloat &&
              (wt == at::kFloat || wt == at::kBFloat16 || wt == at::kHalf),
              "dense_linear: float32 rows against float32, bfloat16 or float16 weights");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  if (!out.defined()) out = at::empty({M, N}, x.options());
  TORCH_CHECK(out.size(0) == M && out.size(1) == N && out.is_contiguous() &&
              out.scalar_type() == at::kFloat, "dense_linear: output buffer of the wrong shape");
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (wt == at::kBFloat16) {
    dense_gemv(xp, M, K, w.data_ptr<at::BFloat16>(), N, op);
  } else if (wt == at::kHalf) {
    dense_gemv(xp, M, K, w.data_ptr<at::Half>(), N, op);
  } else {
    dense_gemv(xp, M, K, w.data_ptr<float>(), N, op);
  }
  if (bias.has_value() && bias->defined()) out.add_(*bias);
  return out;
}

at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias) {
  at::Tensor out;
  return dense_linear_into(x, weight, bias, out);
}

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("dense_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("dense_linear", &pagedllm::dense_linear);
}
