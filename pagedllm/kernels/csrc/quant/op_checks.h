// What the quantized linear ops' entry points (quant_linear.cpp, kquant_linear.cpp,
// q5_linear.cpp) share around their kernels: the activation rows checked and made float32, and
// the embedding-row gather loop with its id checks. Each op keeps its own weight checks (its
// layout's shapes and dtypes) and its own kernel dispatch.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common.h"

namespace pagedllm::quant {
namespace {

inline void check_activation_bits(int64_t activation_bits) {
  TORCH_CHECK(activation_bits == 16 || activation_bits == 8, "activation bits must be 16 or 8");
}

// x_in [M, K] as contiguous float32 rows, K a multiple of the activation block (the kernels
// quantize x per kBlock columns).
inline at::Tensor float_rows(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2, "x must be [M, K]");
  at::Tensor x = x_in.to(at::kFloat).contiguous();
  TORCH_CHECK(x.size(1) % kBlock == 0, "in_features must be a multiple of 32, got ", x.size(1));
  return x;
}

// The output rows of a quantized linear: a new [M, N] tensor, or `into` (the *_into forms: the
// caller's rows, e.g. the fused layer's step buffer, which must be [M, N] contiguous float32).
inline at::Tensor out_rows(const at::Tensor& into, int64_t M, int64_t N, const at::Tensor& x) {
  if (!into.defined()) return at::empty({M, N}, x.options());
  TORCH_CHECK(into.scalar_type() == at::kFloat && into.dim() == 2 && into.size(0) == M &&
                  into.size(1) == N && into.is_contiguous(),
              "out must be [M, N] contiguous float32 rows");
  return into;
}

// Rows `ids` of a weight of N rows and K columns as float32 [len(ids), K] (embedding lookups
// from a quantized table): row(n, dst) writes row n's K floats to dst.
template <typename Row>
at::Tensor gather_rows(const at::Tensor& ids, int64_t N, int64_t K, Row&& row) {
  const at::Tensor idx = ids.to(at::kLong).contiguous();
  const int64_t T = idx.numel();
  at::Tensor out = at::empty({T, K}, at::TensorOptions().dtype(at::kFloat));
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = ip[t];
    TORCH_CHECK(n >= 0 && n < N, "row id out of range");
    row(n, out.data_ptr<float>() + t * K);
  }
  return out;
}

}  // namespace
}  // namespace pagedllm::quant
