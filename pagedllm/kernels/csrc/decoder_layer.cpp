// Llama-style decoder layers, all of a model's in one call per step (the engine's "compiled
// forward" on CPU); each layer is
//
//   residual = hidden + residual;  x = rmsnorm(residual) * w_in
//   q, k, v = split(x Wqkv^T + b);  rotary(q, k);  cache[slots] = k, v
//   residual = paged_attention(q) Wo^T + residual;  x = rmsnorm(residual) * w_post
//   hidden = (silu(x Wg^T) * (x Wu^T)) Wd^T
//
// Every step is the same ATen operator (or our kernel) the eager Python modules call, in the
// same order, so the result is bit-identical to the eager path; what it removes is ~30 Python
// module calls and ~25 Python-level operator dispatches per layer (~0.4 ms per layer on this CPU),
// and the per-layer call itself (LlamaDecoderStack below).
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "ops.h"
#include "vec_math.h"

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
// selects and views). Rows of Hkv * D floats; the cache holds [2, slots, Hkv * D] contiguously,
// in float32 or float16 (rounded to nearest even, as Tensor.to(float16) does).
void copy_row(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void copy_row(at::Half* dst, const float* src, int64_t n) {
  int64_t i = 0;
#ifdef PAGEDLLM_AVX2
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) dst[i] = static_cast<at::Half>(src[i]);
}

template <typename CT>
void write_kv_rows_as(const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_cache,
                      const at::Tensor& slot_mapping) {
  const int64_t T = slot_mapping.size(0), width = k.size(1);
  const int64_t slots = kv_cache.numel() / 2 / width;
  const at::Tensor slot_ids = slot_mapping.contiguous();  // (kept alive while sp is read)
  const int64_t* sp = slot_ids.data_ptr<int64_t>();
  CT* key_cache = kv_cache.data_ptr<CT>();
  CT* value_cache = key_cache + kv_cache.stride(0);
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = sp[t];
    TORCH_CHECK(slot >= 0 && slot < slots, "slot ", slot, " out of range");
    copy_row(key_cache + slot * width, kp + t * k.stride(0), width);
    copy_row(value_cache + slot * width, vp + t * v.stride(0), width);
  }
}

void write_kv_rows(const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_cache,
                   const at::Tensor& slot_mapping) {
  TORCH_CHECK(kv_cache.size(0) == 2 && kv_cache.is_contiguous() &&
              slot_mapping.scalar_type() == at::kLong && k.stride(1) == 1 && v.stride(1) == 1 &&
              v.size(1) == k.size(1));
  if (kv_cache.scalar_type() == at::kHalf) {
    write_kv_rows_as<at::Half>(k, v, kv_cache, slot_mapping);
  } else {
    TORCH_CHECK(kv_cache.scalar_type() == at::kFloat, "KV cache: float32 or float16 expected");
    write_kv_rows_as<float>(k, v, kv_cache, slot_mapping);
  }
}

// The static arguments of one layer, gathered once per model (models/llama_fused.py).
struct LlamaLayer {
  at::Tensor input_norm, post_norm;
  double eps;
  std::vector<at::Tensor> qkv_w, o_w, gate_up_w, down_w;
  std::vector<int64_t> linear_meta;  // (group_size, u4) x 4, then gemv_max_rows
  std::optional<at::Tensor> qkv_bias, o_bias;
  at::Tensor cos_sin_cache;
  int64_t num_heads, num_kv_heads, head_dim, rotary_dim;
  at::Tensor kv_cache;
  double scale;
  int64_t sliding_window;
  double soft_cap;
};

// A step's tokens and attention metadata, shared by every layer.
struct StepInputs {
  at::Tensor positions, slot_mapping, block_table, seq_lens, query_start_loc;
};

std::tuple<at::Tensor, at::Tensor> run_layer(const LlamaLayer& layer, const at::Tensor& hidden,
                                             const std::optional<at::Tensor>& residual_in,
                                             const StepInputs& step) {
  const auto& [input_norm, post_norm, eps, qkv_w, o_w, gate_up_w, down_w, linear_meta, qkv_bias,
               o_bias, cos_sin_cache, num_heads, num_kv_heads, head_dim, rotary_dim, kv_cache,
               scale, sliding_window, soft_cap] = layer;
  const auto& [positions, slot_mapping, block_table, seq_lens, query_start_loc] = step;
  // (linear_meta's size is checked once, in add_layer)
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

// Every decoder layer of a model in one call per step: Python hands over the static arguments
// once (add_layer) instead of ~25 per layer per step, whose parsing and the Python loop cost
// more than the layers' own non-matmul work at batch 1.
class LlamaDecoderStack : public torch::CustomClassHolder {
 public:
  void add_layer(at::Tensor input_norm, at::Tensor post_norm, double eps,
                 std::vector<at::Tensor> qkv_w, std::vector<at::Tensor> o_w,
                 std::vector<at::Tensor> gate_up_w, std::vector<at::Tensor> down_w,
                 std::vector<int64_t> linear_meta, std::optional<at::Tensor> qkv_bias,
                 std::optional<at::Tensor> o_bias, at::Tensor cos_sin_cache, int64_t num_heads,
                 int64_t num_kv_heads, int64_t head_dim, int64_t rotary_dim, at::Tensor kv_cache,
                 double scale, int64_t sliding_window, double soft_cap) {
    TORCH_CHECK(linear_meta.size() == 9, "linear_meta: 4 x (group_size, u4), gemv_max_rows");
    layers_.push_back({std::move(input_norm), std::move(post_norm), eps, std::move(qkv_w),
                       std::move(o_w), std::move(gate_up_w), std::move(down_w),
                       std::move(linear_meta), std::move(qkv_bias), std::move(o_bias),
                       std::move(cos_sin_cache), num_heads, num_kv_heads, head_dim, rotary_dim,
                       std::move(kv_cache), scale, sliding_window, soft_cap});
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // (hidden, residual) after the last layer; the final norm is the caller's.
  std::tuple<at::Tensor, at::Tensor> forward(at::Tensor hidden, std::optional<at::Tensor> residual,
                                             at::Tensor positions, at::Tensor slot_mapping,
                                             at::Tensor block_table, at::Tensor seq_lens,
                                             at::Tensor query_start_loc) {
    TORCH_CHECK(!layers_.empty(), "LlamaDecoderStack: no layers");
    const StepInputs step{std::move(positions), std::move(slot_mapping), std::move(block_table),
                          std::move(seq_lens), std::move(query_start_loc)};
    for (const LlamaLayer& layer : layers_) {
      auto [out, res] = run_layer(layer, hidden, residual, step);
      hidden = std::move(out);
      residual = std::move(res);
    }
    return {hidden, *residual};
  }

 private:
  std::vector<LlamaLayer> layers_;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.class_<LlamaDecoderStack>("LlamaDecoderStack")
      .def(torch::init<>())
      .def("add_layer", &LlamaDecoderStack::add_layer)
      .def("num_layers", &LlamaDecoderStack::num_layers)
      .def("forward", &LlamaDecoderStack::forward);
}
