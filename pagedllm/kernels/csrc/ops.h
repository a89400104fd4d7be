// The kernels other kernels call directly (the fused decoder layer), also registered as
// torch.ops.pagedllm.* for Python.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace pagedllm {

// y [M, N] = x [M, K] W^T, W = scales * codes + mins per group (see quant_linear.cpp).
at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                        const at::Tensor& mins, int64_t group_size, bool u4,
                        int64_t gemv_max_rows);

// Causal attention of each request's query rows over its paged K/V (see paged_attention.cpp).
at::Tensor paged_attention(const at::Tensor& query, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& block_table,
                           const at::Tensor& seq_lens, const at::Tensor& query_start_loc,
                           double scale, int64_t sliding_window, double soft_cap);

// y [M, N] = x [M, K] W^T (+ bias), float32: our GEMV up to 256 rows, else ATen's GEMM
// (see dense_linear.cpp).
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias);

// (weight * rmsnorm(x + residual), x + residual), float32 rows (see elementwise.cpp).
std::tuple<at::Tensor, at::Tensor> rms_norm_residual(const at::Tensor& x,
                                                     const std::optional<at::Tensor>& residual,
                                                     const at::Tensor& weight, double eps);

// Rotated copies of q [T, H * D] and k [T, Hkv * D] (neox layout, see elementwise.cpp).
std::tuple<at::Tensor, at::Tensor> rotary_embedding(const at::Tensor& query,
                                                    const at::Tensor& key,
                                                    const at::Tensor& cos_sin_cache,
                                                    const at::Tensor& positions,
                                                    int64_t head_dim, int64_t rotary_dim);

// [T, 2I] (gate | up) -> silu(gate) * up (see elementwise.cpp).
at::Tensor silu_and_mul(const at::Tensor& x);

}  // namespace pagedllm
