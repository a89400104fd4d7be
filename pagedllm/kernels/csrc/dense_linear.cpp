// y[M, N] = x[M, K] W[N, K]^T (+ bias) in float32. Up to kGemvMaxRows rows (decode) a streaming
// GEMV over W, four weight rows and two activation rows per pass; more rows: ATen's GEMM.
// Measured (2 threads): W [3072, 576]: 1 row 120 vs 158 us (ATen), 8 rows 226 vs 559 us, 32 rows
// 823 vs 1475 us; W [49152, 576] (an LM head): 1 row 4.2 vs 9.8 ms (~27 vs ~12 GB/s). Decode is
// bound by reading W, so this is where float32 decode time goes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "ops.h"

#include "dense_tile.h"

namespace {

constexpr int64_t kGemvMaxRows = 32;

template <int R>
void gemv_tile(const float* wp, const float* xp, int64_t K, int64_t N, int64_t n, float* op,
               int64_t m0) {
  float part[4 * R];
  if (n + 4 <= N) {
    const float* w[4] = {wp + n * K, wp + (n + 1) * K, wp + (n + 2) * K, wp + (n + 3) * K};
    dots<4, R>(w, xp + m0 * K, K, part);
    for (int i = 0; i < 4; ++i)
      for (int r = 0; r < R; ++r) op[(m0 + r) * N + n + i] = part[i * R + r];
  } else {
    for (int64_t i = n; i < N; ++i) {
      const float* w[1] = {wp + i * K};
      dots<1, R>(w, xp + m0 * K, K, part);
      for (int r = 0; r < R; ++r) op[(m0 + r) * N + i] = part[r];
    }
  }
}

}  // namespace

namespace pagedllm {

at::Tensor dense_linear(const at::Tensor& x_in, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x_in.dim() == 2 && weight.dim() == 2 && x_in.size(1) == weight.size(1));
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat);
  if (x_in.size(0) > kGemvMaxRows) return at::linear(x_in, weight, bias);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t begin, int64_t end) {
    for (int64_t quad = begin; quad < end; ++quad) {
      const int64_t n = quad * 4;
      for (int64_t m0 = 0; m0 < M; m0 += 2) {
        if (M - m0 >= 2) {
          gemv_tile<2>(wp, xp, K, N, n, op, m0);
        } else {
          gemv_tile<1>(wp, xp, K, N, n, op, m0);
        }
      }
    }
  });
  if (bias.has_value() && bias->defined()) out.add_(*bias);
  return out;
}

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("dense_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("dense_linear", &pagedllm::dense_linear);
}
