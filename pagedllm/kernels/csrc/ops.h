// The kernels other kernels call directly (the fused decoder layer), also registered as
// torch.ops.pagedllm.* for Python. The *_rows / *_into forms work on rows that the caller owns:
// the fused layer runs them on buffers allocated once per step, with no ATen operator (and its
// allocations) between two matrix products.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace pagedllm {

// y [M, N] = x [M, K] W^T, W = scales * codes + mins per group (see quant_linear.cpp);
// activation_bits 16 or 8 (int8 activations, opt-in).
at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                        const at::Tensor& mins, int64_t group_size, bool u4,
                        int64_t activation_bits = 16);

// y [M, N] = x [M, K] W^T for a GGUF K-quant W held with its compact two-level scales (see
// quant/kquant.h); the same bits as quant_linear on the PackedGroupWeight of the same blocks.
at::Tensor kquant_linear(const at::Tensor& x, const at::Tensor& codes,
                         const at::Tensor& sub_scales, const at::Tensor& sub_mins,
                         const at::Tensor& super_scales, const at::Tensor& super_mins,
                         int64_t group_size, bool u4, int64_t offset,
                         int64_t activation_bits = 16);

// y [M, N] = x [M, K] W^T for a GGUF Q5_0 / Q5_1 W held with its fp16 scales and 5-bit codes
// (see quant/q5.h; mins empty for Q5_0); the same bits as quant_linear on its PackedGroupWeight.
at::Tensor q5_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                     const at::Tensor& mins, int64_t offset, int64_t activation_bits = 16);

// Weight rows per row group of the interleaved quantized layouts (quant/interleaved.h kRowGroup):
// a K-quant or Q5 weight's codes are [N / 16, ...], a row-interleaved quant_linear weight's too.
constexpr int64_t kQuantRowGroup = 16;

// The three above into `out` ([M, N] contiguous float32 rows the caller owns: the fused layer's
// step buffers), the same bits; x float32.
void quant_linear_into(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                       const at::Tensor& mins, int64_t group_size, bool u4,
                       int64_t activation_bits, const at::Tensor& out);
void kquant_linear_into(const at::Tensor& x, const at::Tensor& codes,
                        const at::Tensor& sub_scales, const at::Tensor& sub_mins,
                        const at::Tensor& super_scales, const at::Tensor& super_mins,
                        int64_t group_size, bool u4, int64_t offset, int64_t activation_bits,
                        const at::Tensor& out);
void q5_linear_into(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                    const at::Tensor& mins, int64_t offset, int64_t activation_bits,
                    const at::Tensor& out);

// Causal attention of each request's query rows over its paged K/V (see paged_attention.cpp).
// A step's attention metadata as the kernel reads it, prepared once for all layers.
struct AttentionPlan {
  at::Tensor block_table, seq_lens, query_start_loc;  // int32, contiguous
  // work items: (request, query tile, key segment); see paged_attention.cpp's kSegmentKeys
  std::vector<int64_t> item_req, item_tile, item_seg;
  // item_partial[i]: -1 when item i's tile has one segment (its rows' outputs are written
  // directly), else where its rows' partial results start in the step's partial buffer (in
  // records of one (row, head, segment)), the tile's records being [row][head][segment]
  std::vector<int64_t> item_partial;
  // the tiles with more than one segment, merged after all items: their first item
  std::vector<int64_t> merges;
  int64_t partial_records = 0;
  // work_before[i]: the work (rows x keys, estimated) of the items before item i, i <= items:
  // threads take contiguous runs of items of about equal work (a long prompt's last tiles see
  // far more keys than its first)
  std::vector<int64_t> work_before;
};
AttentionPlan plan_attention(const at::Tensor& block_table, const at::Tensor& seq_lens,
                             const at::Tensor& query_start_loc);
// One layer's K and V caches, [num_blocks, block_size, Hkv, D] each, float32 or float16, or
// int8 [num_blocks, block_size, Hkv, D + 4] (--kv-cache-dtype int8: D values and their float32
// scale's 4 bytes, attention/ops/kv_quant.py); head_dim is D.
struct PagedCache {
  const void* key;
  const void* value;
  bool half;
  int64_t block_size, num_kv_heads, head_dim;
  bool int8 = false;
};
PagedCache paged_cache(const at::Tensor& key_cache, const at::Tensor& value_cache);
// The same from a layer's stacked cache [2, num_blocks, block_size, Hkv, D] (K, then V).
PagedCache paged_cache(const at::Tensor& kv_cache);
// q rows of H heads (q_stride floats apart) -> out rows (out_stride floats apart).
void paged_attention_rows(const AttentionPlan& plan, const float* q, int64_t q_stride, int64_t H,
                          const PagedCache& cache, double scale, int64_t sliding_window,
                          double soft_cap, float* out, int64_t out_stride);
at::Tensor paged_attention(const at::Tensor& query, const at::Tensor& key_cache,
                           const at::Tensor& value_cache, const at::Tensor& block_table,
                           const at::Tensor& seq_lens, const at::Tensor& query_start_loc,
                           double scale, int64_t sliding_window, double soft_cap);

// y [M, N] = x [M, K] W^T (+ bias), float32: our GEMV for every row count
// (see dense_linear.cpp).
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias);
// The same into `out` (allocated if undefined, else of shape [M, N]).
at::Tensor dense_linear_into(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::Tensor& out);

// (weight * rmsnorm(x + residual), x + residual), float32 rows (see elementwise.cpp).
// The rows form: residual may be null (then x is the residual stream and res_out is not
// written); res_out may be residual itself (the add is in place).
void rms_norm_residual_rows(const float* x, const float* residual, const float* weight,
                            int64_t T, int64_t D, float eps, float* res_out, float* out);
std::tuple<at::Tensor, at::Tensor> rms_norm_residual(const at::Tensor& x,
                                                     const std::optional<at::Tensor>& residual,
                                                     const at::Tensor& weight, double eps);

// Rotated copies of q [T, H * D] and k [T, Hkv * D] (neox layout, see elementwise.cpp).
// The rows form rotates T rows of `heads` heads; dst may be src (in place).
void rotary_rows(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t T,
                 int64_t heads, int64_t head_dim, int64_t rotary_dim, const float* cos_sin,
                 const int64_t* positions);
std::tuple<at::Tensor, at::Tensor> rotary_embedding(const at::Tensor& query,
                                                    const at::Tensor& key,
                                                    const at::Tensor& cos_sin_cache,
                                                    const at::Tensor& positions,
                                                    int64_t head_dim, int64_t rotary_dim);

// [T, 2I] (gate | up) -> silu(gate) * up (see elementwise.cpp).
at::Tensor silu_and_mul(const at::Tensor& x);
void silu_and_mul_rows(const float* x, int64_t T, int64_t I, float* out);
// [T, 2I] (gate | up) -> gelu_tanh(gate) * up (GeGLU with PyTorch's approximate="tanh").
at::Tensor gelu_tanh_and_mul(const at::Tensor& x);
void gelu_tanh_and_mul_rows(const float* x, int64_t T, int64_t I, float* out);

// Multi-LoRA: y[t] += (a[s] x[t]) b[s] for each row t of slot s = slots[t] in [0, slots)
// (see lora.cpp); a [slots, width, in], b [slots, width, out] float32, contiguous.
void lora_add_rows_into(float* y, int64_t y_stride, const float* x, int64_t x_stride, int64_t T,
                        const at::Tensor& a, const at::Tensor& b, const int64_t* slots);
at::Tensor lora_add_rows(at::Tensor y, const at::Tensor& x, const at::Tensor& a,
                         const at::Tensor& b, const at::Tensor& slots);

}  // namespace pagedllm
