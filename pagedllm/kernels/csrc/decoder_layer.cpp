// One Llama-style decoder layer in a single call (the engine's "compiled forward" on CPU):
//
//   residual = hidden + residual;  x = rmsnorm(residual) * w_in
//   q, k, v = split(x Wqkv^T + b);  rotary(q, k);  cache[slots] = k, v
//   residual = paged_attention(q) Wo^T + residual;  x = rmsnorm(residual) * w_post
//   hidden = (silu(x Wg^T) * (x Wu^T)) Wd^T
//
// Every step is the same ATen operator (or our kernel) the eager Python modules call, in the
// same order, so the result is bit-identical to the eager path; what it removes is ~30 Python
// module calls and ~25 Python-level operator dispatches per layer (~0.4 ms per layer on this CPU).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "ops.h"

namespace {

// A linear layer as passed from Python: [weight] (dense float) or [codes, scales, mins]
// (PackedGroupWeight), meta = {group_size, u4}.
at::Tensor linear(const at::Tensor& x, const std::vector<at::Tensor>& w, int64_t group_size,
                  bool u4, const std::optional<at::Tensor>& bias, int64_t gemv_max_rows) {
  // as UnquantizedLinearMethod (F.linear with the bias) / RepackedLinearMethod (kernel + bias)
  if (w.size() == 1) return pagedllm::dense_linear(x, w[0], bias);  // float32 (llama_fused.py)
  const at::Tensor y = pagedllm::quant_linear(x, w[0], w[1], w[2], group_size, u4, gemv_max_rows);
  return bias.has_value() && bias->defined() ? y + *bias : y;
}

// cache[slot_mapping[t]] = k[t], v[t] (attention/ops/cache_write.py's two index_copy_ calls as
// plain row copies: the same bytes, ~10 us less per layer than the two ATen dispatches with their
// selects and views). Rows of Hkv * D floats; the cache holds [2, slots, Hkv * D] contiguously.
void write_kv_rows(const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_cache,
                   const at::Tensor& slot_mapping) {
  const int64_t T = slot_mapping.size(0), width = k.size(1);
  const int64_t slots = kv_cache.numel() / 2 / width;
  TORCH_CHECK(kv_cache.size(0) == 2 && kv_cache.is_contiguous() && slot_mapping.scalar_type() == at::kLong &&
              k.stride(1) == 1 && v.stride(1) == 1 && v.size(1) == width);
  const int64_t* sp = slot_mapping.contiguous().data_ptr<int64_t>();
  float* key_cache = kv_cache.data_ptr<float>();
  float* value_cache = key_cache + kv_cache.stride(0);
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = sp[t];
    TORCH_CHECK(slot >= 0 && slot < slots, "slot ", slot, " out of range");
    std::memcpy(key_cache + slot * width, kp + t * k.stride(0), width * sizeof(float));
    std::memcpy(value_cache + slot * width, vp + t * v.stride(0), width * sizeof(float));
  }
}

std::tuple<at::Tensor, at::Tensor> llama_decoder_layer(
    const at::Tensor& hidden, const std::optional<at::Tensor>& residual_in,
    const at::Tensor& input_norm, const at::Tensor& post_norm, double eps,
    const std::vector<at::Tensor>& qkv_w, const std::vector<at::Tensor>& o_w,
    const std::vector<at::Tensor>& gate_up_w, const std::vector<at::Tensor>& down_w,
    const std::vector<int64_t>& linear_meta,  // (group_size, u4) x 4, then gemv_max_rows
    const std::optional<at::Tensor>& qkv_bias, const std::optional<at::Tensor>& o_bias,
    const at::Tensor& cos_sin_cache, const at::Tensor& positions, int64_t num_heads,
    int64_t num_kv_heads, int64_t head_dim, int64_t rotary_dim, const at::Tensor& kv_cache,
    const at::Tensor& slot_mapping, const at::Tensor& block_table, const at::Tensor& seq_lens,
    const at::Tensor& query_start_loc, double scale, int64_t sliding_window, double soft_cap) {
  TORCH_CHECK(linear_meta.size() == 9, "linear_meta: 4 x (group_size, u4), gemv_max_rows");
  const int64_t gemv_rows = linear_meta[8];
  const int64_t T = hidden.size(0);
  // input norm with the residual add fused (layers/layernorm.py RMSNorm.forward)
  auto [x, residual] = pagedllm::rms_norm_residual(hidden, residual_in, input_norm, eps);

  // attention
  const at::Tensor qkv = linear(x, qkv_w, linear_meta[0], linear_meta[1], qkv_bias, gemv_rows);
  const int64_t q_size = num_heads * head_dim, kv_size = num_kv_heads * head_dim;
  const std::vector<at::Tensor> split = qkv.split_with_sizes({q_size, kv_size, kv_size}, -1);
  const auto [q, k] = pagedllm::rotary_embedding(split[0], split[1], cos_sin_cache, positions,
                                                 head_dim, rotary_dim);
  const at::Tensor v = split[2];
  write_kv_rows(k, v, kv_cache, slot_mapping);
  const at::Tensor key_cache = kv_cache.select(0, 0), value_cache = kv_cache.select(0, 1);
  const at::Tensor attn =
      pagedllm::paged_attention(q.view({T, num_heads, head_dim}), key_cache, value_cache,
                                block_table, seq_lens, query_start_loc, scale, sliding_window,
                                soft_cap)
          .reshape({T, q_size});
  const at::Tensor o = linear(attn, o_w, linear_meta[2], linear_meta[3], o_bias, gemv_rows);

  // MLP
  std::tie(x, residual) = pagedllm::rms_norm_residual(o, residual, post_norm, eps);
  const at::Tensor gu = linear(x, gate_up_w, linear_meta[4], linear_meta[5], std::nullopt,
                               gemv_rows);
  const at::Tensor act = pagedllm::silu_and_mul(gu);
  at::Tensor out = linear(act, down_w, linear_meta[6], linear_meta[7], std::nullopt, gemv_rows);
  return {out, residual};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("llama_decoder_layer(Tensor hidden, Tensor? residual, Tensor input_norm, "
        "Tensor post_norm, float eps, Tensor[] qkv_w, Tensor[] o_w, Tensor[] gate_up_w, "
        "Tensor[] down_w, int[] linear_meta, Tensor? qkv_bias, Tensor? o_bias, "
        "Tensor cos_sin_cache, Tensor positions, int num_heads, int num_kv_heads, int head_dim, "
        "int rotary_dim, Tensor kv_cache, Tensor slot_mapping, Tensor block_table, "
        "Tensor seq_lens, Tensor query_start_loc, float scale, int sliding_window, "
        "float soft_cap) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("llama_decoder_layer", &llama_decoder_layer);
}
