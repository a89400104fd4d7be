// Llama-style decoder layers, all of a model's in one call per step (the engine's "compiled
// forward" on CPU); each layer is
//
//   residual = hidden + residual;  x = rmsnorm(residual) * w_in
//   q, k, v = split(x Wqkv^T + b);  rotary(q, k);  cache[slots] = k, v
//   residual = paged_attention(q) Wo^T + residual;  x = rmsnorm(residual) * w_post
//   hidden = (silu(x Wg^T) * (x Wu^T)) Wd^T
//
// Every step is the same arithmetic the eager Python modules run through our torch ops (the
// ops.h *_rows functions they wrap, or the same ATen operator), in the same order, so the
// result is bit-identical to the eager path. What it removes: ~30 Python module calls and ~25
// operator dispatches per layer (~0.4 ms per layer on this CPU), the per-layer call itself
// (LlamaDecoderStack below), and, for float32 weights, every ATen allocation between two
// matrix products: the rows live in buffers allocated once per step (StepBuffers), and the
// attention metadata is prepared once per step. At batch 1 those ~25 small ATen calls per layer
// cost ~60 us, mostly cache misses on code and tensor metadata that each layer's weights had
// just streamed out of the caches.
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "ops.h"
#include "vec/vec.h"

namespace {

// cache[slot_mapping[t]] = k[t], v[t] (attention/ops/cache_write.py's two index_copy_ calls as
// plain row copies: the same bytes). Rows of Hkv * D floats; the cache holds [2, slots, Hkv * D]
// contiguously, in float32 or float16 (rounded to nearest even, as Tensor.to(float16) does).
void copy_row(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void copy_row(at::Half* dst, const float* src, int64_t n) {
  int64_t i = 0;
  namespace vec = pagedllm::vec;
  for (; i + 8 <= n; i += 8) vec::store(dst + i, vec::load(src + i));
  for (; i < n; ++i) dst[i] = static_cast<at::Half>(src[i]);
}

template <typename CT>
void write_kv_rows_as(const float* k, const float* v, int64_t row_stride, int64_t width,
                      const int64_t* slots, int64_t T, const at::Tensor& kv_cache) {
  const int64_t num_slots = kv_cache.numel() / 2 / width;
  CT* key_cache = kv_cache.data_ptr<CT>();
  CT* value_cache = key_cache + kv_cache.stride(0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slots[t];
    TORCH_CHECK(slot >= 0 && slot < num_slots, "slot ", slot, " out of range");
    copy_row(key_cache + slot * width, k + t * row_stride, width);
    copy_row(value_cache + slot * width, v + t * row_stride, width);
  }
}

void write_kv_rows(const float* k, const float* v, int64_t row_stride, int64_t width,
                   const int64_t* slots, int64_t T, const at::Tensor& kv_cache) {
  if (kv_cache.scalar_type() == at::kHalf) {
    write_kv_rows_as<at::Half>(k, v, row_stride, width, slots, T, kv_cache);
  } else {
    write_kv_rows_as<float>(k, v, row_stride, width, slots, T, kv_cache);
  }
}

// The static arguments of one layer, gathered once per model (models/llama_fused.py).
struct LlamaLayer {
  at::Tensor input_norm, post_norm;
  double eps;
  std::vector<at::Tensor> qkv_w, o_w, gate_up_w, down_w;
  std::vector<int64_t> linear_meta;  // (group_size, u4) x 4
  std::optional<at::Tensor> qkv_bias, o_bias;
  at::Tensor cos_sin_cache;
  int64_t num_heads, num_kv_heads, head_dim, rotary_dim;
  at::Tensor kv_cache;  // [2, num_blocks, block_size, Hkv, D], float32 or float16
  double scale;
  int64_t sliding_window;
  double soft_cap;
};

// A step's tokens and attention metadata, prepared once and shared by every layer.
struct StepInputs {
  int64_t T;
  at::Tensor positions, slot_mapping;  // int64, contiguous
  pagedllm::AttentionPlan attention;
};

// A layer's intermediate rows, allocated at the step's first layer and reused by the others
// (every layer of a stack has the same widths).
struct StepBuffers {
  at::Tensor x, residual, qkv, attn, o, gate_up, act, hidden;
};

float* rows_of(at::Tensor& buffer, int64_t T, int64_t width) {
  if (!buffer.defined()) buffer = at::empty({T, width}, at::kFloat);
  TORCH_CHECK(buffer.size(0) == T && buffer.size(1) == width, "layers of different widths");
  return buffer.data_ptr<float>();
}

// A linear layer as passed from Python: [weight] (dense float32) or [codes, scales, mins]
// (PackedGroupWeight), meta = {group_size, u4}, computed as UnquantizedLinearMethod
// (dense_linear, here into `buffer`) / RepackedLinearMethod
// (kernel + bias) do.
at::Tensor linear(const at::Tensor& x, const std::vector<at::Tensor>& w, int64_t group_size,
                  bool u4, const std::optional<at::Tensor>& bias,
                  at::Tensor& buffer) {
  if (w.size() == 1) return pagedllm::dense_linear_into(x, w[0], bias, buffer);
  const at::Tensor y = pagedllm::quant_linear(x, w[0], w[1], w[2], group_size, u4);
  return bias.has_value() && bias->defined() ? y + *bias : y;
}

// (hidden, residual) after one layer; residual_in undefined: the first layer (hidden is then
// the residual stream, as RMSNorm.forward without a residual).
std::tuple<at::Tensor, at::Tensor> run_layer(const LlamaLayer& layer, const at::Tensor& hidden,
                                             const at::Tensor& residual_in,
                                             const StepInputs& step, StepBuffers& buf) {
  const auto& [input_norm, post_norm, eps, qkv_w, o_w, gate_up_w, down_w, linear_meta, qkv_bias,
               o_bias, cos_sin_cache, num_heads, num_kv_heads, head_dim, rotary_dim, kv_cache,
               scale, sliding_window, soft_cap] = layer;
  // (linear_meta's size is checked once, in add_layer)
  const int64_t T = step.T, width = hidden.size(1);
  const float feps = static_cast<float>(eps);
  // input norm with the residual add fused (layers/layernorm.py RMSNorm.forward)
  at::Tensor residual = hidden;
  float* x = rows_of(buf.x, T, width);
  if (residual_in.defined()) {
    // (in place when residual_in is the buffer, from the layer before)
    pagedllm::rms_norm_residual_rows(hidden.data_ptr<float>(), residual_in.data_ptr<float>(),
                                     input_norm.data_ptr<float>(), T, width, feps,
                                     rows_of(buf.residual, T, width), x);
    residual = buf.residual;
  } else {
    pagedllm::rms_norm_residual_rows(hidden.data_ptr<float>(), nullptr,
                                     input_norm.data_ptr<float>(), T, width, feps, nullptr, x);
  }

  // attention: q and k rotated in place in the qkv rows, k and v copied into the cache
  const at::Tensor qkv = linear(buf.x, qkv_w, linear_meta[0], linear_meta[1], qkv_bias,
                                buf.qkv);
  float* qkv_rows = qkv.data_ptr<float>();
  const int64_t stride = qkv.size(1);
  const int64_t q_size = num_heads * head_dim, kv_size = num_kv_heads * head_dim;
  const int64_t* positions = step.positions.data_ptr<int64_t>();
  const float* cos_sin = cos_sin_cache.data_ptr<float>();
  pagedllm::rotary_rows(qkv_rows, stride, qkv_rows, stride, T, num_heads, head_dim, rotary_dim,
                        cos_sin, positions);
  pagedllm::rotary_rows(qkv_rows + q_size, stride, qkv_rows + q_size, stride, T, num_kv_heads,
                        head_dim, rotary_dim, cos_sin, positions);
  write_kv_rows(qkv_rows + q_size, qkv_rows + q_size + kv_size, stride, kv_size,
                step.slot_mapping.data_ptr<int64_t>(), T, kv_cache);
  pagedllm::paged_attention_rows(step.attention, qkv_rows, stride, num_heads,
                                 pagedllm::paged_cache(kv_cache), scale, sliding_window, soft_cap,
                                 rows_of(buf.attn, T, q_size), q_size);
  const at::Tensor o = linear(buf.attn, o_w, linear_meta[2], linear_meta[3], o_bias,
                              buf.o);

  // MLP
  pagedllm::rms_norm_residual_rows(o.data_ptr<float>(), residual.data_ptr<float>(),
                                   post_norm.data_ptr<float>(), T, width, feps,
                                   rows_of(buf.residual, T, width), x);
  const at::Tensor gate_up = linear(buf.x, gate_up_w, linear_meta[4], linear_meta[5],
                                    std::nullopt, buf.gate_up);
  const int64_t inter = gate_up.size(1) / 2;
  pagedllm::silu_and_mul_rows(gate_up.data_ptr<float>(), T, inter, rows_of(buf.act, T, inter));
  at::Tensor out = linear(buf.act, down_w, linear_meta[6], linear_meta[7], std::nullopt,
                          buf.hidden);
  return {out, buf.residual};
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
    TORCH_CHECK(linear_meta.size() == 8, "linear_meta: 4 x (group_size, u4)");
    for (auto* w : {&qkv_w, &o_w, &gate_up_w, &down_w}) {
      if (w->size() == 1) {
        TORCH_CHECK((*w)[0].scalar_type() == at::kFloat, "dense weights: float32 expected");
        (*w)[0] = (*w)[0].contiguous();  // (a no-op for module parameters)
      }
    }
    TORCH_CHECK(input_norm.is_contiguous() && post_norm.is_contiguous() &&
                cos_sin_cache.is_contiguous() && kv_cache.dim() == 5 && kv_cache.size(0) == 2 &&
                kv_cache.is_contiguous() && kv_cache.size(3) * kv_cache.size(4) ==
                num_kv_heads * head_dim && (kv_cache.scalar_type() == at::kFloat ||
                kv_cache.scalar_type() == at::kHalf), "LlamaDecoderStack: unexpected layout");
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
    TORCH_CHECK(hidden.scalar_type() == at::kFloat && hidden.dim() == 2);
    const StepInputs step{hidden.size(0), positions.to(at::kLong).contiguous(),
                          slot_mapping.to(at::kLong).contiguous(),
                          pagedllm::plan_attention(block_table, seq_lens, query_start_loc)};
    hidden = hidden.contiguous();
    at::Tensor res = residual.has_value() ? residual->contiguous() : at::Tensor();
    StepBuffers buffers;
    for (const LlamaLayer& layer : layers_) {
      auto [out, r] = run_layer(layer, hidden, res, step, buffers);
      hidden = std::move(out);
      res = std::move(r);
    }
    residual = res;
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
