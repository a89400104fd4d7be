// Llama-style decoder layers, all of a model's in one call per step (the engine's "compiled
// forward" on CPU); each layer is
//
//   residual = hidden + residual;  x = rmsnorm(residual) * w_in
//   q, k, v = split(x Wqkv^T + b);  [q, k = rmsnorm per head (Qwen3, Gemma 3)];  rotary(q, k)
//   cache[slots] = k, v
//   a = paged_attention(q) Wo^T;  [a = rmsnorm(a) * w_attn_out (Gemma 2/3)]
//   residual = a + residual;  x = rmsnorm(residual) * w_post
//   hidden = (act(x Wg^T) * (x Wu^T)) Wd^T;  [hidden = rmsnorm(hidden) * w_mlp_out (Gemma 2/3)]
//
// with act SiLU (SwiGLU) or GELU's tanh approximation (GeGLU: Gemma). Gemma's norms scale by
// (1 + w): the spec hands over that sum (layers/layernorm.py GemmaRMSNorm stores it), so every
// norm is the same rows kernel.
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
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "kv_quant.h"
#include "ops.h"
#include "section_timer.h"
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

// For each row t: its slot (checked against the cache's num_slots rows of `width` CTs) and
// write(t, key row, value row) at that slot; the cache is [2, slots, width] (K, then V).
template <typename CT, typename Write>
void for_each_slot(const int64_t* slots, int64_t T, int64_t width, const at::Tensor& kv_cache,
                   Write&& write) {
  const int64_t num_slots = kv_cache.numel() / 2 / width;
  CT* key_cache = kv_cache.data_ptr<CT>();
  CT* value_cache = key_cache + kv_cache.stride(0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slots[t];
    TORCH_CHECK(slot >= 0 && slot < num_slots, "slot ", slot, " out of range");
    write(t, key_cache + slot * width, value_cache + slot * width);
  }
}

template <typename CT>
void write_kv_rows_as(const float* k, const float* v, int64_t row_stride, int64_t width,
                      const int64_t* slots, int64_t T, const at::Tensor& kv_cache) {
  for_each_slot<CT>(slots, T, width, kv_cache, [&](int64_t t, CT* key, CT* value) {
    copy_row(key, k + t * row_stride, width);
    copy_row(value, v + t * row_stride, width);
  });
}

// An int8 cache (--kv-cache-dtype int8): each head's row quantized with its own scale
// (kv_quant.h), [2, slots, Hkv, D + 4] bytes: the same bytes as cache_write.py's quantize_kv.
void write_kv_rows_int8(const float* k, const float* v, int64_t row_stride, int64_t head_dim,
                        const int64_t* slots, int64_t T, const at::Tensor& kv_cache) {
  const int64_t heads = kv_cache.size(3), row = head_dim + 4;
  auto write = [&](int64_t t, int8_t* key, int8_t* value) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t src = t * row_stride + h * head_dim;
      pagedllm::quantize_row_int8(k + src, head_dim, key + h * row);
      pagedllm::quantize_row_int8(v + src, head_dim, value + h * row);
    }
  };
  for_each_slot<int8_t>(slots, T, heads * row, kv_cache, write);
}

void write_kv_rows(const float* k, const float* v, int64_t row_stride, int64_t width,
                   int64_t head_dim, const int64_t* slots, int64_t T, const at::Tensor& kv_cache) {
  if (kv_cache.scalar_type() == at::kChar) {
    write_kv_rows_int8(k, v, row_stride, head_dim, slots, T, kv_cache);
  } else if (kv_cache.scalar_type() == at::kHalf) {
    write_kv_rows_as<at::Half>(k, v, row_stride, width, slots, T, kv_cache);
  } else {
    write_kv_rows_as<float>(k, v, row_stride, width, slots, T, kv_cache);
  }
}

// A linear layer's weight: [weight] (dense float32) or [codes, scales, mins] (PackedGroupWeight
// with its group_size and u4), computed as UnquantizedLinearMethod / RepackedLinearMethod do.
struct LinearWeight {
  std::vector<at::Tensor> tensors;
  int64_t group_size = 0;
  bool u4 = false;
  int64_t activation_bits = 16;  // 8: int8 activations (--quantized-activation-dtype int8)
  int64_t offset = 0;            // K-quant (5 tensors) / Q5: the codes' centring
  bool q5 = false;  // [codes, scales, mins] of a Q5_0 / Q5_1 weight (q5_linear.cpp)
};

// A linear's LoRA slots (lora/layers.py LoRALinear's buffers, shared: a slot filled later is
// seen here): a [slots, S*R, in], b [slots, S*R, out].
struct LoRASlots {
  at::Tensor a, b;
};

// The gated MLP's activation (DecoderLayerSpec's "activation" int; absent: SiLU).
enum class Activation : int64_t { kSilu = 0, kGeluTanh = 1 };

// The static arguments of one layer, named fields of the DecoderLayerSpec the worker builds
// (worker/fused_cpu_stack.py) and hands over once per model.
struct LlamaLayer {
  at::Tensor input_norm, post_norm;
  // Gemma 2/3's sandwich norms of the attention and MLP outputs, both or none
  std::optional<at::Tensor> attn_out_norm, mlp_out_norm;
  double eps;
  Activation activation;
  LinearWeight qkv, o, gate_up, down;
  std::optional<LoRASlots> qkv_lora, o_lora, gate_up_lora, down_lora;  // multi-LoRA, or none
  std::optional<at::Tensor> qkv_bias, o_bias;
  std::optional<at::Tensor> q_norm, k_norm;  // per-head RMSNorm weights [D] (Qwen3), both or none
  double qk_norm_eps;
  at::Tensor cos_sin_cache;
  int64_t num_heads, num_kv_heads, head_dim, rotary_dim;
  at::Tensor kv_cache;  // [2, num_blocks, block_size, Hkv, D], float32 or float16 (int8: D + 4)
  double scale;
  int64_t sliding_window;  // 0: none (the attention kernel's convention)
  double soft_cap;         // 0: none
  int64_t mlp_block_rows;  // the MLP's rows per block (mlp_half); 0: a step's rows at once
};

// A step's tokens and attention metadata, prepared once and shared by every layer.
struct StepInputs {
  int64_t T;
  at::Tensor positions, slot_mapping;  // int64, contiguous
  pagedllm::AttentionPlan attention;
  // Multi-LoRA (lora/layers.py LoRAMapping.token_slots): each token's adapter slot (the slot
  // count for the base model); undefined: no adapter token this step.
  at::Tensor lora_slots;
};

// A layer's intermediate rows, allocated at the step's first layer and reused by the others
// (every layer of a stack has the same widths). `shared`: a quantized qkv's rows, then a quantized
// gate_up block's, which are never live at once (attention is done with qkv before the MLP
// starts): one buffer for both instead of a new tensor for each per layer, whose churn of
// differently sized blocks (24 and 27 MiB for a 2048-token chunk of a 1B Llama) left glibc's
// heap ~55 MiB above the rows in use at a long prefill's peak.
struct StepBuffers {
  at::Tensor x, residual, qkv, attn, o, gate_up, act, hidden, shared;
};

float* rows_of(at::Tensor& buffer, int64_t T, int64_t width) {
  if (!buffer.defined()) buffer = at::empty({T, width}, at::kFloat);
  TORCH_CHECK(buffer.size(0) == T && buffer.size(1) == width, "layers of different widths");
  return buffer.data_ptr<float>();
}

// x W^T of a quantized weight into `out` ([M, N] contiguous float32 rows): the kernels the
// registered ops run, the same bits.
void quantized_linear_into(const at::Tensor& x, const LinearWeight& w, const at::Tensor& out) {
  const auto& t = w.tensors;
  if (t.size() == 5) {  // a K-quant weight with its compact scales (kquant_linear.cpp)
    pagedllm::kquant_linear_into(x, t[0], t[1], t[2], t[3], t[4], w.group_size, w.u4, w.offset,
                                 w.activation_bits, out);
  } else if (w.q5) {
    pagedllm::q5_linear_into(x, t[0], t[1], t[2], w.offset, w.activation_bits, out);
  } else {
    pagedllm::quant_linear_into(x, t[0], t[1], t[2], w.group_size, w.u4, w.activation_bits, out);
  }
}

// The output width of a quantized weight (its rows).
int64_t quantized_out_features(const LinearWeight& w) {
  const at::Tensor& codes = w.tensors[0];
  const bool row_groups = w.tensors.size() == 5 || w.q5 || codes.dim() == 3;  // interleaved
  return row_groups ? codes.size(0) * pagedllm::kQuantRowGroup : codes.size(0);
}

// [rows, width] contiguous rows at the start of buf.shared, grown (never shrunk) to fit.
at::Tensor shared_rows(StepBuffers& buf, int64_t rows, int64_t width) {
  if (!buf.shared.defined() || buf.shared.numel() < rows * width)
    buf.shared = at::empty({rows * width}, at::kFloat);
  return buf.shared.narrow(0, 0, rows * width).view({rows, width});
}

at::Tensor linear(const at::Tensor& x, const LinearWeight& w,
                  const std::optional<at::Tensor>& bias, at::Tensor& buffer) {
  if (w.tensors.size() == 1) return pagedllm::dense_linear_into(x, w.tensors[0], bias, buffer);
  at::Tensor y = at::empty({x.size(0), quantized_out_features(w)}, at::kFloat);
  quantized_linear_into(x, w, y);
  return bias.has_value() && bias->defined() ? y + *bias : y;
}

// x W^T (+ bias) of a quantized weight into buf.shared's rows (see StepBuffers); a dense
// weight as linear() does.
at::Tensor linear_shared(const at::Tensor& x, const LinearWeight& w,
                         const std::optional<at::Tensor>& bias, at::Tensor& dense_buffer,
                         StepBuffers& buf) {
  if (w.tensors.size() == 1) return linear(x, w, bias, dense_buffer);
  at::Tensor y = shared_rows(buf, x.size(0), quantized_out_features(w));
  quantized_linear_into(x, w, y);
  if (bias.has_value() && bias->defined()) y.add_(*bias);  // (y + bias's bits, in place)
  return y;
}

// Each adapter token's low-rank update, in place on the linear's output rows (lora.cpp: the
// kernel LoRALinear.forward calls).
// y and x: rows first_row.. of the step (all of them by default).
void add_lora(const at::Tensor& y, const at::Tensor& x, const std::optional<LoRASlots>& lora,
              const StepInputs& step, int64_t first_row = 0) {
  if (!lora.has_value() || !step.lora_slots.defined()) return;
  pagedllm::lora_add_rows_into(y.data_ptr<float>(), y.size(1), x.data_ptr<float>(), x.size(1),
                               y.size(0), lora->a, lora->b,
                               step.lora_slots.data_ptr<int64_t>() + first_row);
}

// RMSNorm over each of `heads` heads of T rows, in place (LlamaAttention._norm_heads: the
// same rows kernel over [T * heads, D]).
void norm_heads(float* rows, int64_t stride, int64_t T, int64_t heads, int64_t head_dim,
                const at::Tensor& weight, double eps) {
  const float* w = weight.data_ptr<float>();
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* r = rows + t * stride;
      pagedllm::rms_norm_residual_rows(r, nullptr, w, heads, head_dim, static_cast<float>(eps),
                                       nullptr, r);
    }
  });
}

// rows = rmsnorm(rows) * weight, in place, without a residual (Gemma2DecoderLayer's sandwich
// norms: the same kernel RMSNorm.forward runs with no residual).
void norm_rows_in_place(const at::Tensor& rows, int64_t T, int64_t width, const at::Tensor& weight,
                        float eps) {
  float* r = rows.data_ptr<float>();
  pagedllm::rms_norm_residual_rows(r, nullptr, weight.data_ptr<float>(), T, width, eps, nullptr, r);
}

// A layer's first half, up to the attention output: the residual add fused into the input norm,
// qkv, q/k norms, rotary, the cache write, attention and o_proj (its bias and LoRA). Returns
// (o, residual); residual_in undefined: the first layer (hidden is then the residual stream, as
// RMSNorm.forward without a residual). Under tensor parallelism o is this rank's partial sum.
std::tuple<at::Tensor, at::Tensor> attention_half(const LlamaLayer& layer,
                                                  const at::Tensor& hidden,
                                                  const at::Tensor& residual_in,
                                                  const StepInputs& step, StepBuffers& buf) {
  const int64_t T = step.T, width = hidden.size(1);
  const float feps = static_cast<float>(layer.eps);
  // input norm with the residual add fused (layers/layernorm.py RMSNorm.forward)
  at::Tensor residual = hidden;
  float* x = rows_of(buf.x, T, width);
  pagedllm::SectionLaps laps(pagedllm::StackSection::kNorm);
  if (residual_in.defined()) {
    // (in place when residual_in is the buffer, from the layer before)
    pagedllm::rms_norm_residual_rows(hidden.data_ptr<float>(), residual_in.data_ptr<float>(),
                                     layer.input_norm.data_ptr<float>(), T, width, feps,
                                     rows_of(buf.residual, T, width), x);
    residual = buf.residual;
  } else {
    pagedllm::rms_norm_residual_rows(hidden.data_ptr<float>(), nullptr,
                                     layer.input_norm.data_ptr<float>(), T, width, feps, nullptr,
                                     x);
  }

  // attention: q and k normed (Qwen3) and rotated in place in the qkv rows, k and v copied
  // into the cache
  laps.next(pagedllm::StackSection::kQkv);
  const at::Tensor qkv = linear_shared(buf.x, layer.qkv, layer.qkv_bias, buf.qkv, buf);
  add_lora(qkv, buf.x, layer.qkv_lora, step);
  float* qkv_rows = qkv.data_ptr<float>();
  const int64_t stride = qkv.size(1), num_heads = layer.num_heads, head_dim = layer.head_dim;
  const int64_t q_size = num_heads * head_dim, kv_size = layer.num_kv_heads * head_dim;
  laps.next(pagedllm::StackSection::kRotaryKv);
  if (layer.q_norm.has_value()) {
    norm_heads(qkv_rows, stride, T, num_heads, head_dim, *layer.q_norm, layer.qk_norm_eps);
    norm_heads(qkv_rows + q_size, stride, T, layer.num_kv_heads, head_dim, *layer.k_norm,
               layer.qk_norm_eps);
  }
  const int64_t* positions = step.positions.data_ptr<int64_t>();
  const float* cos_sin = layer.cos_sin_cache.data_ptr<float>();
  pagedllm::rotary_rows(qkv_rows, stride, qkv_rows, stride, T, num_heads, head_dim,
                        layer.rotary_dim, cos_sin, positions);
  pagedllm::rotary_rows(qkv_rows + q_size, stride, qkv_rows + q_size, stride, T,
                        layer.num_kv_heads, head_dim, layer.rotary_dim, cos_sin, positions);
  write_kv_rows(qkv_rows + q_size, qkv_rows + q_size + kv_size, stride, kv_size, head_dim,
                step.slot_mapping.data_ptr<int64_t>(), T, layer.kv_cache);
  laps.next(pagedllm::StackSection::kAttention);
  pagedllm::paged_attention_rows(step.attention, qkv_rows, stride, num_heads,
                                 pagedllm::paged_cache(layer.kv_cache), layer.scale,
                                 layer.sliding_window, layer.soft_cap,
                                 rows_of(buf.attn, T, q_size), q_size);
  laps.next(pagedllm::StackSection::kO);
  const at::Tensor o = linear(buf.attn, layer.o, layer.o_bias, buf.o);
  add_lora(o, buf.attn, layer.o_lora, step);
  return {o, residual};
}

// The first `rows` rows of a [capacity, width] buffer, allocated at its first use.
at::Tensor leading_rows(at::Tensor& buffer, int64_t capacity, int64_t rows, int64_t width) {
  if (!buffer.defined()) buffer = at::empty({capacity, width}, at::kFloat);
  TORCH_CHECK(buffer.size(0) == capacity && buffer.size(1) == width && rows <= capacity,
              "layers of different widths");
  return buffer.narrow(0, 0, rows);
}

// x W^T without a bias into `out` (rows of a contiguous buffer): in place for a dense weight,
// copied from the quantized kernels' own output tensor otherwise.
void linear_into(const at::Tensor& x, const LinearWeight& w, at::Tensor out) {
  if (w.tensors.size() == 1) {
    pagedllm::dense_linear_into(x, w.tensors[0], std::nullopt, out);
    return;
  }
  quantized_linear_into(x, w, out);
}

// The gated MLP over `rows` rows of buf.x from `first` (gate_up, the activation, down): down's
// rows go into `out`'s rows first.. (out undefined: the step's one block, into a tensor of its
// own, as eager). gate_up's and the activation's rows live in [capacity, *] buffers.
at::Tensor mlp_rows(const LlamaLayer& layer, int64_t first, int64_t rows, int64_t capacity,
                    const StepInputs& step, StepBuffers& buf, const at::Tensor& out,
                    pagedllm::SectionLaps& laps) {
  const at::Tensor x = buf.x.narrow(0, first, rows);
  laps.next(pagedllm::StackSection::kGateUp);
  at::Tensor gate_up;
  if (layer.gate_up.tensors.size() == 1) {  // dense: into the block's buffer
    gate_up = leading_rows(buf.gate_up, capacity, rows, layer.gate_up.tensors[0].size(0));
    pagedllm::dense_linear_into(x, layer.gate_up.tensors[0], std::nullopt, gate_up);
  } else {  // quantized: into buf.shared (qkv's rows are dead by now)
    gate_up = linear_shared(x, layer.gate_up, std::nullopt, buf.gate_up, buf);
  }
  add_lora(gate_up, x, layer.gate_up_lora, step, first);
  const int64_t inter = gate_up.size(1) / 2;
  const at::Tensor act = leading_rows(buf.act, capacity, rows, inter);
  laps.next(pagedllm::StackSection::kAct);
  if (layer.activation == Activation::kGeluTanh) {
    pagedllm::gelu_tanh_and_mul_rows(gate_up.data_ptr<float>(), rows, inter,
                                     act.data_ptr<float>());
  } else {
    pagedllm::silu_and_mul_rows(gate_up.data_ptr<float>(), rows, inter, act.data_ptr<float>());
  }
  laps.next(pagedllm::StackSection::kDown);
  if (!out.defined()) {
    at::Tensor y = linear(act, layer.down, std::nullopt, buf.hidden);
    add_lora(y, act, layer.down_lora, step, first);
    return y;
  }
  const at::Tensor y = out.narrow(0, first, rows);
  linear_into(act, layer.down, y);
  add_lora(y, act, layer.down_lora, step, first);
  return y;
}

// A layer's second half: the attention output (whole: summed over the ranks) added to the
// residual inside the post-attention norm (into buf.residual), then the gated MLP. Returns the
// down_proj output; under tensor parallelism this rank's partial sum.
//
// NOTE: the MLP takes a long step's rows in blocks of layer.mlp_block_rows: its gate|up and
// activation rows are the widest of the layer (a 1B Llama's 8192-wide MLP: 192 MiB of float32
// for a 2048-token chunk, and the down kernel's int16 copy of the activation 32 MiB more), and
// they are what made a prefill's resident set peak. Every kernel gives a row the same bits
// whatever rows share its call (the batch-invariance rule), so the blocks change no bit; the
// weights are read once per block instead of once per step (~430 rows of 2048 columns between
// two reads of a 1B layer's gate_up).
//
// o is taken by value and dropped once the norm has read it: a quantized o_proj's rows are a
// tensor of their own (16 MiB for a 2048-token chunk of a 1B Llama), which need not stay
// resident beside the MLP's.
at::Tensor mlp_half(const LlamaLayer& layer, at::Tensor o, const at::Tensor& residual,
                    const StepInputs& step, StepBuffers& buf) {
  const int64_t T = step.T, width = o.size(1);
  pagedllm::SectionLaps laps(pagedllm::StackSection::kNorm);
  pagedllm::rms_norm_residual_rows(o.data_ptr<float>(), residual.data_ptr<float>(),
                                   layer.post_norm.data_ptr<float>(), T, width,
                                   static_cast<float>(layer.eps), rows_of(buf.residual, T, width),
                                   rows_of(buf.x, T, width));
  o.reset();
  const int64_t block = layer.mlp_block_rows > 0 ? std::min(T, layer.mlp_block_rows) : T;
  if (block == T) return mlp_rows(layer, 0, T, T, step, buf, at::Tensor(), laps);
  const at::Tensor out = leading_rows(buf.hidden, T, T, width);
  for (int64_t first = 0; first < T; first += block)
    mlp_rows(layer, first, std::min(block, T - first), block, step, buf, out, laps);
  return out;
}

// Gemma 2/3's sandwich norm of a half's output (before its residual add), if the layer has it.
void sandwich_norm(const LlamaLayer& layer, const std::optional<at::Tensor>& weight,
                   const at::Tensor& rows) {
  if (weight.has_value())
    norm_rows_in_place(rows, rows.size(0), rows.size(1), *weight, static_cast<float>(layer.eps));
}

// (hidden, residual) after one layer, both halves in one go (one rank: nothing to sum between).
std::tuple<at::Tensor, at::Tensor> run_layer(const LlamaLayer& layer, const at::Tensor& hidden,
                                             const at::Tensor& residual_in,
                                             const StepInputs& step, StepBuffers& buf) {
  auto [o, residual] = attention_half(layer, hidden, residual_in, step, buf);
  sandwich_norm(layer, layer.attn_out_norm, o);
  at::Tensor out = mlp_half(layer, std::move(o), residual, step, buf);
  sandwich_norm(layer, layer.mlp_out_norm, out);
  return {out, buf.residual};
}

// A layer's spec as three named maps (worker/fused_cpu_stack.py DecoderLayerSpec.kernel_args);
// every key is checked here, an unknown or missing one is an error that names it.
class LayerSpecReader {
 public:
  LayerSpecReader(c10::Dict<std::string, at::Tensor> tensors,
                  c10::Dict<std::string, double> scalars, c10::Dict<std::string, int64_t> ints)
      : tensors_(std::move(tensors)), scalars_(std::move(scalars)), ints_(std::move(ints)) {}

  at::Tensor tensor(const std::string& key) {
    TORCH_CHECK(tensors_.contains(key), "DecoderLayerSpec: tensor '", key, "' missing");
    used_.push_back(key);
    // (the kernel reads raw rows, and writes the KV cache in place: never a copy)
    at::Tensor t = tensors_.at(key);
    TORCH_CHECK(t.is_contiguous(), "DecoderLayerSpec: tensor '", key, "' is not contiguous");
    return t;
  }
  std::optional<at::Tensor> optional_tensor(const std::string& key) {
    if (!tensors_.contains(key)) return std::nullopt;
    return tensor(key);
  }
  double scalar(const std::string& key, std::optional<double> absent = std::nullopt) {
    if (!scalars_.contains(key) && absent.has_value()) return *absent;
    TORCH_CHECK(scalars_.contains(key), "DecoderLayerSpec: scalar '", key, "' missing");
    used_.push_back(key);
    return scalars_.at(key);
  }
  int64_t integer(const std::string& key, std::optional<int64_t> absent = std::nullopt) {
    if (!ints_.contains(key) && absent.has_value()) return *absent;
    TORCH_CHECK(ints_.contains(key), "DecoderLayerSpec: int '", key, "' missing");
    used_.push_back(key);
    return ints_.at(key);
  }
  // "<name>.weight" (dense float32, or bfloat16/float16 widened by dense_linear) or "<name>.codes/.scales/.mins" + "<name>.group_size/.u4"
  LinearWeight linear(const std::string& name) {
    LinearWeight w;
    if (tensors_.contains(name + ".weight")) {
      w.tensors = {tensor(name + ".weight")};
      const at::ScalarType wt = w.tensors[0].scalar_type();
      TORCH_CHECK(wt == at::kFloat || wt == at::kBFloat16 || wt == at::kHalf,
                  "DecoderLayerSpec: ", name, ".weight: float32, bfloat16 or float16 expected");
      return w;
    }
    if (tensors_.contains(name + ".sub_scales")) {  // K-quant: "<name>.offset" too
      w.tensors = {tensor(name + ".codes"), tensor(name + ".sub_scales"),
                   tensor(name + ".sub_mins"), tensor(name + ".super_scales"),
                   tensor(name + ".super_mins")};
      w.offset = integer(name + ".offset");
    } else {
      w.tensors = {tensor(name + ".codes"), tensor(name + ".scales"), tensor(name + ".mins")};
      w.q5 = integer(name + ".q5", 0) != 0;  // Q5_0 / Q5_1's compact form: "<name>.offset" too
      if (w.q5) w.offset = integer(name + ".offset");
    }
    w.group_size = integer(name + ".group_size");
    w.u4 = integer(name + ".u4") != 0;
    w.activation_bits = integer(name + ".activation_bits", 16);
    return w;
  }
  // "<name>.lora_a" + "<name>.lora_b": the linear's LoRA slots (absent: no adapters)
  std::optional<LoRASlots> lora(const std::string& name) {
    const std::optional<at::Tensor> a = optional_tensor(name + ".lora_a");
    if (!a.has_value()) return std::nullopt;
    LoRASlots slots{*a, tensor(name + ".lora_b")};
    TORCH_CHECK(slots.a.dim() == 3 && slots.b.dim() == 3 && slots.a.size(0) == slots.b.size(0) &&
                slots.a.size(1) == slots.b.size(1) && slots.a.scalar_type() == at::kFloat &&
                slots.b.scalar_type() == at::kFloat,
                "DecoderLayerSpec: ", name, ".lora_a/.lora_b: float32 [slots, S*R, in] and "
                "[slots, S*R, out] expected");
    return slots;
  }
  void check_all_used() const {
    const auto is_used = [&](const std::string& key) {
      return std::find(used_.begin(), used_.end(), key) != used_.end();
    };
    for (const auto& item : tensors_)
      TORCH_CHECK(is_used(item.key()), "DecoderLayerSpec: unknown tensor '", item.key(), "'");
    for (const auto& item : scalars_)
      TORCH_CHECK(is_used(item.key()), "DecoderLayerSpec: unknown scalar '", item.key(), "'");
    for (const auto& item : ints_)
      TORCH_CHECK(is_used(item.key()), "DecoderLayerSpec: unknown int '", item.key(), "'");
  }

 private:
  c10::Dict<std::string, at::Tensor> tensors_;
  c10::Dict<std::string, double> scalars_;
  c10::Dict<std::string, int64_t> ints_;
  std::vector<std::string> used_;
};

LlamaLayer read_layer(LayerSpecReader& spec) {
  LlamaLayer layer;
  layer.input_norm = spec.tensor("input_norm");
  layer.post_norm = spec.tensor("post_norm");
  layer.attn_out_norm = spec.optional_tensor("attn_out_norm");
  layer.mlp_out_norm = spec.optional_tensor("mlp_out_norm");
  layer.eps = spec.scalar("eps");
  const int64_t activation = spec.integer("activation", 0);  // absent: SiLU
  TORCH_CHECK(activation == 0 || activation == 1, "DecoderLayerSpec: activation ", activation,
              " (0: SiLU, 1: GELU tanh)");
  layer.activation = static_cast<Activation>(activation);
  layer.qkv = spec.linear("qkv");
  layer.o = spec.linear("o");
  layer.gate_up = spec.linear("gate_up");
  layer.down = spec.linear("down");
  layer.qkv_lora = spec.lora("qkv");
  layer.o_lora = spec.lora("o");
  layer.gate_up_lora = spec.lora("gate_up");
  layer.down_lora = spec.lora("down");
  layer.qkv_bias = spec.optional_tensor("qkv_bias");
  layer.o_bias = spec.optional_tensor("o_bias");
  layer.q_norm = spec.optional_tensor("q_norm");
  layer.k_norm = spec.optional_tensor("k_norm");
  layer.qk_norm_eps = 0.0;
  layer.cos_sin_cache = spec.tensor("cos_sin_cache");
  layer.num_heads = spec.integer("num_heads");
  layer.num_kv_heads = spec.integer("num_kv_heads");
  layer.head_dim = spec.integer("head_dim");
  layer.rotary_dim = spec.integer("rotary_dim");
  layer.kv_cache = spec.tensor("kv_cache");
  layer.scale = spec.scalar("scale");
  layer.sliding_window = spec.integer("sliding_window", 0);  // absent: no window
  layer.soft_cap = spec.scalar("soft_cap", 0.0);             // absent: no cap
  layer.mlp_block_rows = spec.integer("mlp_block_rows", 0);   // absent: no blocks
  TORCH_CHECK(layer.mlp_block_rows >= 0, "DecoderLayerSpec: mlp_block_rows ",
              layer.mlp_block_rows, " < 0");
  TORCH_CHECK(layer.q_norm.has_value() == layer.k_norm.has_value(),
              "DecoderLayerSpec: q_norm and k_norm go together");
  TORCH_CHECK(layer.attn_out_norm.has_value() == layer.mlp_out_norm.has_value(),
              "DecoderLayerSpec: attn_out_norm and mlp_out_norm go together");
  if (layer.q_norm.has_value()) {
    layer.qk_norm_eps = spec.scalar("qk_norm_eps");
    for (const at::Tensor* w : {&*layer.q_norm, &*layer.k_norm})
      TORCH_CHECK(w->numel() == layer.head_dim && w->scalar_type() == at::kFloat,
                  "DecoderLayerSpec: q_norm / k_norm: float32 [head_dim] expected");
  }
  spec.check_all_used();
  const at::Tensor& kv = layer.kv_cache;
  const bool int8_kv = kv.scalar_type() == at::kChar;  // rows of head_dim + 4 bytes
  TORCH_CHECK(kv.dim() == 5 && kv.size(0) == 2 && kv.size(3) == layer.num_kv_heads &&
              kv.size(4) == layer.head_dim + (int8_kv ? 4 : 0) &&
              (kv.scalar_type() == at::kFloat || kv.scalar_type() == at::kHalf || int8_kv),
              "DecoderLayerSpec: kv_cache: [2, blocks, block_size, num_kv_heads, head_dim], "
              "float32 or float16, or int8 [..., head_dim + 4] expected");
  return layer;
}

// Every decoder layer of a model in one call per step: Python hands over the static arguments
// once (add_layer) instead of ~25 per layer per step, whose parsing and the Python loop cost
// more than the layers' own non-matmul work at batch 1.
class LlamaDecoderStack : public torch::CustomClassHolder {
 public:
  void add_layer(c10::Dict<std::string, at::Tensor> tensors,
                 c10::Dict<std::string, double> scalars, c10::Dict<std::string, int64_t> ints) {
    LayerSpecReader spec(std::move(tensors), std::move(scalars), std::move(ints));
    layers_.push_back(read_layer(spec));
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // (hidden, residual) after the last layer; the final norm is the caller's.
  std::tuple<at::Tensor, at::Tensor> forward(at::Tensor hidden, std::optional<at::Tensor> residual,
                                             at::Tensor positions, at::Tensor slot_mapping,
                                             at::Tensor block_table, at::Tensor seq_lens,
                                             at::Tensor query_start_loc,
                                             std::optional<at::Tensor> lora_slots) {
    TORCH_CHECK(!layers_.empty(), "LlamaDecoderStack: no layers");
    TORCH_CHECK(hidden.scalar_type() == at::kFloat && hidden.dim() == 2);
    const StepInputs step = step_inputs(hidden.size(0), positions, slot_mapping, block_table,
                                        seq_lens, query_start_loc, lora_slots);
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

  // Tensor parallelism: the same layers cut at their two all-reduce points, o_proj's and
  // down_proj's partial sums, which the caller sums over the ranks (torch.distributed) and hands
  // back. One step is
  //
  //   begin_step(...)
  //   for i in layers:  o = all_reduce(attention_partial(i, x, residual if i == 0))
  //                     x = all_reduce(mlp_partial(i, o))
  //   hidden, residual = end_step(x)
  //
  // The residual stream and the step's buffers stay here between the calls. Each rank's
  // layers hold its shard (their head counts are the rank's); a row-parallel bias is rank 0's
  // only, so adding it before the sum adds it once. Gemma's sandwich norms apply to the summed
  // outputs, so they run at the start of the call that consumes them.
  void begin_step(int64_t num_tokens, at::Tensor positions, at::Tensor slot_mapping,
                  at::Tensor block_table, at::Tensor seq_lens, at::Tensor query_start_loc,
                  std::optional<at::Tensor> lora_slots) {
    TORCH_CHECK(!layers_.empty(), "LlamaDecoderStack: no layers");
    tp_step_.emplace(TpStep{step_inputs(num_tokens, positions, slot_mapping, block_table,
                                        seq_lens, query_start_loc, lora_slots)});
  }

  // Layer `index`'s attention output before the sum: x is the step's input hidden rows (layer
  // 0; residual: the stream from an earlier pipeline stage, or none) or the previous layer's
  // summed down_proj output (residual: none, the stack's own).
  at::Tensor attention_partial(int64_t index, at::Tensor x, std::optional<at::Tensor> residual) {
    TpStep& tp = expect_phase(index, /*mlp=*/false);
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.size(0) == tp.step.T,
                "LlamaDecoderStack: [num_tokens, hidden] float32 rows expected");
    x = x.contiguous();
    if (index == 0) {
      tp.residual = residual.has_value() ? residual->contiguous() : at::Tensor();
    } else {
      TORCH_CHECK(!residual.has_value(), "LlamaDecoderStack: a residual after layer 0");
      sandwich_norm(layers_[index - 1], layers_[index - 1].mlp_out_norm, x);
    }
    auto [o, r] = attention_half(layers_[index], x, tp.residual, tp.step, tp.buffers);
    tp.residual = r;
    tp.next_mlp = true;
    return o;
  }

  // Layer `index`'s down_proj output before the sum; o: its attention output, summed.
  at::Tensor mlp_partial(int64_t index, at::Tensor o) {
    TpStep& tp = expect_phase(index, /*mlp=*/true);
    TORCH_CHECK(o.scalar_type() == at::kFloat && o.dim() == 2 && o.size(0) == tp.step.T,
                "LlamaDecoderStack: [num_tokens, hidden] float32 rows expected");
    o = o.contiguous();
    const LlamaLayer& layer = layers_[index];
    sandwich_norm(layer, layer.attn_out_norm, o);
    at::Tensor out = mlp_half(layer, o, tp.residual, tp.step, tp.buffers);
    tp.residual = tp.buffers.residual;
    tp.next_mlp = false;
    tp.next_layer = index + 1;
    return out;
  }

  // (hidden, residual) after the last layer, from its summed down_proj output; ends the step.
  std::tuple<at::Tensor, at::Tensor> end_step(at::Tensor x) {
    TpStep& tp = expect_phase(num_layers(), /*mlp=*/false);
    x = x.contiguous();
    sandwich_norm(layers_.back(), layers_.back().mlp_out_norm, x);
    at::Tensor residual = tp.residual;
    tp_step_.reset();
    return {x, residual};
  }

 private:
  // A tensor-parallel step in progress: its inputs, buffers and residual, and the next call due.
  struct TpStep {
    StepInputs step;
    StepBuffers buffers;
    at::Tensor residual;
    int64_t next_layer = 0;
    bool next_mlp = false;
  };

  static StepInputs step_inputs(int64_t T, const at::Tensor& positions,
                                const at::Tensor& slot_mapping, const at::Tensor& block_table,
                                const at::Tensor& seq_lens, const at::Tensor& query_start_loc,
                                const std::optional<at::Tensor>& lora_slots) {
    StepInputs step{T, positions.to(at::kLong).contiguous(),
                    slot_mapping.to(at::kLong).contiguous(),
                    pagedllm::plan_attention(block_table, seq_lens, query_start_loc)};
    if (lora_slots.has_value()) {
      step.lora_slots = lora_slots->to(at::kLong).contiguous();
      TORCH_CHECK(step.lora_slots.numel() == step.T, "LlamaDecoderStack: one LoRA slot per token");
    }
    return step;
  }

  // The step's state, checked to be at layer `index`'s attention (or MLP) half: the calls come
  // in order, every layer's two halves, or a step is being misused.
  TpStep& expect_phase(int64_t index, bool mlp) {
    TORCH_CHECK(tp_step_.has_value(), "LlamaDecoderStack: begin_step first");
    TpStep& tp = *tp_step_;
    TORCH_CHECK(tp.next_layer == index && tp.next_mlp == mlp, "LlamaDecoderStack: layer ", index,
                mlp ? "'s MLP" : "'s attention", " out of order (next: layer ", tp.next_layer,
                tp.next_mlp ? "'s MLP)" : "'s attention)");
    return tp;
  }

  std::optional<TpStep> tp_step_;
  std::vector<LlamaLayer> layers_;
};

// The section timer's clock (section_timer.h SectionClock: 0 off, 1 wall, 2 the calling
// thread's CPU time; on: the sums restart from zero) and its sums, in seconds, in StackSection
// order.
void set_stack_section_timing(int64_t clock) {
  TORCH_CHECK(clock >= 0 && clock <= 2, "set_stack_section_timing: clock 0, 1 or 2");
  auto& times = pagedllm::section_times();
  if (clock) std::fill(std::begin(times.nanos), std::end(times.nanos), 0);
  times.clock.store(static_cast<int>(clock), std::memory_order_relaxed);
}

std::vector<double> stack_section_seconds() {
  const auto& times = pagedllm::section_times();
  std::vector<double> seconds;
  for (int64_t n : times.nanos) seconds.push_back(static_cast<double>(n) * 1e-9);
  return seconds;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("set_stack_section_timing", &set_stack_section_timing);
  m.def("stack_section_seconds", &stack_section_seconds);
  m.class_<LlamaDecoderStack>("LlamaDecoderStack")
      .def(torch::init<>())
      .def("add_layer", &LlamaDecoderStack::add_layer)
      .def("num_layers", &LlamaDecoderStack::num_layers)
      .def("forward", &LlamaDecoderStack::forward)
      .def("begin_step", &LlamaDecoderStack::begin_step)
      .def("attention_partial", &LlamaDecoderStack::attention_partial)
      .def("mlp_partial", &LlamaDecoderStack::mlp_partial)
      .def("end_step", &LlamaDecoderStack::end_step);
}
