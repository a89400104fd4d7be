// Row-wise float32 operators of the decoder layer that ATen runs as ~10 small dispatches each:
// RMSNorm with the residual add fused, rotary embedding (neox layout, partial rotary), SiLU-and-mul
// and GELU(tanh)-and-mul. Each is a *_rows function over raw rows, which the fused layer calls on
// its own buffers, and a torch op around it for the eager modules, so the two paths stay
// bit-identical.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "ops.h"
#include "vec/vec.h"

namespace pagedllm {

void rms_norm_residual_rows(const float* x, const float* residual, const float* weight,
                            int64_t T, int64_t D, float eps, float* res_out, float* out) {
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xr = x + t * D;
      const float* h = xr;  // the residual stream after the add
      if (residual != nullptr) {
        const float* rr = residual + t * D;
        float* hr = res_out + t * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) hr[i] = xr[i] + rr[i];
        h = hr;
      }
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < D; ++i) ss += h[i] * h[i];
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
      float* o = out + t * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) o[i] = weight[i] * (h[i] * inv);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rms_norm_residual(const at::Tensor& x_in,
                                                     const std::optional<at::Tensor>& residual,
                                                     const at::Tensor& weight, double eps) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat);
  const at::Tensor x = x_in.contiguous();
  const int64_t D = x.size(-1), T = x.numel() / D;
  const bool has_res = residual.has_value() && residual->defined();
  // the residual stream after the add (x itself when there is no residual, as RMSNorm.forward)
  at::Tensor res = has_res ? at::empty_like(x) : x;
  at::Tensor out = at::empty_like(x);
  const at::Tensor r_in = has_res ? residual->contiguous() : x;
  const at::Tensor w = weight.contiguous();
  rms_norm_residual_rows(x.data_ptr<float>(), has_res ? r_in.data_ptr<float>() : nullptr,
                         w.data_ptr<float>(), T, D, static_cast<float>(eps),
                         res.data_ptr<float>(), out.data_ptr<float>());
  return {out, res};
}

void rotary_rows(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t T,
                 int64_t heads, int64_t head_dim, int64_t rotary_dim, const float* cos_sin,
                 const int64_t* positions) {
  const int64_t half = rotary_dim / 2;
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* cs = cos_sin + positions[t] * rotary_dim;
      for (int64_t h = 0; h < heads; ++h) {
        const float* x = src + t * src_stride + h * head_dim;
        float* y = dst + t * dst_stride + h * head_dim;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float c = cs[i], s = cs[half + i], x1 = x[i], x2 = x[half + i];
          y[i] = x1 * c - x2 * s;
          y[half + i] = x2 * c + x1 * s;
        }
        if (y != x)
          for (int64_t i = rotary_dim; i < head_dim; ++i) y[i] = x[i];
      }
    }
  });
}

// q [T, H * D], k [T, Hkv * D] -> rotated copies; cos_sin_cache [P, R] = [cos | sin] per position.
std::tuple<at::Tensor, at::Tensor> rotary_embedding(const at::Tensor& query,
                                                    const at::Tensor& key,
                                                    const at::Tensor& cos_sin_cache,
                                                    const at::Tensor& positions,
                                                    int64_t head_dim, int64_t rotary_dim) {
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat &&
              cos_sin_cache.scalar_type() == at::kFloat);
  TORCH_CHECK(query.stride(1) == 1 && key.stride(1) == 1,
              "rotary_embedding: rows must be contiguous");
  const at::Tensor pos = positions.to(at::kLong).contiguous();
  const at::Tensor cache = cos_sin_cache.contiguous();
  const int64_t T = query.size(0);
  at::Tensor q_out = at::empty({T, query.size(1)}, query.options());
  at::Tensor k_out = at::empty({T, key.size(1)}, key.options());
  for (auto [src, dst] : {std::pair{&query, &q_out}, std::pair{&key, &k_out}})
    rotary_rows(src->data_ptr<float>(), src->stride(0), dst->data_ptr<float>(), dst->size(1), T,
                src->size(1) / head_dim, head_dim, rotary_dim, cache.data_ptr<float>(),
                pos.data_ptr<int64_t>());
  return {q_out, k_out};
}

namespace {

// [T, 2I] rows (gate | up) -> act(gate) * up [T, I]: `vector` does 8 columns, `tail` the last
// I % 8 (gate, up, out, count); rows are independent, 16 to a task.
template <typename Vector, typename Tail>
void gated_rows(const float* x, int64_t T, int64_t I, float* out, Vector vector, Tail tail) {
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g = x + t * 2 * I;
      const float* u = g + I;
      float* o = out + t * I;
      int64_t i = 0;
      for (; i + 8 <= I; i += 8) vec::store(o + i, vector(vec::load(g + i), vec::load(u + i)));
      if (i < I) tail(g + i, u + i, o + i, I - i);
    }
  });
}

// A gated activation op: x [T, 2I] float32 -> [T, I] by its rows kernel.
at::Tensor gated_op(const at::Tensor& x_in, void (*rows)(const float*, int64_t, int64_t, float*)) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && x_in.dim() == 2);
  const at::Tensor x = x_in.contiguous();
  const int64_t T = x.size(0), I = x.size(1) / 2;
  at::Tensor out = at::empty({T, I}, x.options());
  rows(x.data_ptr<float>(), T, I, out.data_ptr<float>());
  return out;
}

// gelu_tanh(g) * u for 8 columns. gelu_tanh(g) = g/2 (1 + tanh(z)), z = sqrt(2/pi) (g + 0.044715
// g^3) (PyTorch's approximate="tanh", HF's gelu_pytorch_tanh), computed as g / (1 + e^(-2z)):
// the same value (1 + tanh(z) = 2 / (1 + e^(-2z))) from the one exp the kernels have.
inline vec::F8 gelu_tanh_mul(vec::F8 g, vec::F8 u) {
  constexpr float kMinus2Beta = -1.5957691216057308f;  // -2 sqrt(2/pi)
  constexpr float kMinus2BetaKappa = kMinus2Beta * 0.044715f;
  const vec::F8 minus_2z =
      g * vec::fma(g * g, vec::set1(kMinus2BetaKappa), vec::set1(kMinus2Beta));
  return g / (vec::set1(1.f) + vec::exp(minus_2z)) * u;
}

}  // namespace

void silu_and_mul_rows(const float* x, int64_t T, int64_t I, float* out) {
  gated_rows(
      x, T, I, out,
      [](vec::F8 g, vec::F8 u) {
        return g / (vec::set1(1.f) + vec::exp(vec::zero() - g)) * u;
      },
      [](const float* g, const float* u, float* o, int64_t n) {
        for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
      });
}

// [T, 2I] (gate | up) -> silu(gate) * up [T, I]; silu(g) = g / (1 + e^-g).
at::Tensor silu_and_mul(const at::Tensor& x) { return gated_op(x, silu_and_mul_rows); }

void gelu_tanh_and_mul_rows(const float* x, int64_t T, int64_t I, float* out) {
  gated_rows(x, T, I, out, gelu_tanh_mul, [](const float* g, const float* u, float* o, int64_t n) {
    // the tail through the same vector arithmetic (zero-padded), so every column of every
    // build rounds alike
    float gt[8] = {}, ut[8] = {}, ot[8];
    std::copy(g, g + n, gt);
    std::copy(u, u + n, ut);
    vec::store(ot, gelu_tanh_mul(vec::load(gt), vec::load(ut)));
    std::copy(ot, ot + n, o);
  });
}

// [T, 2I] (gate | up) -> gelu_tanh(gate) * up [T, I].
at::Tensor gelu_tanh_and_mul(const at::Tensor& x) { return gated_op(x, gelu_tanh_and_mul_rows); }

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("rms_norm_residual(Tensor x, Tensor? residual, Tensor weight, float eps) "
        "-> (Tensor, Tensor)");
  m.def("rotary_embedding(Tensor query, Tensor key, Tensor cos_sin_cache, Tensor positions, "
        "int head_dim, int rotary_dim) -> (Tensor, Tensor)");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("gelu_tanh_and_mul(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("rms_norm_residual", &pagedllm::rms_norm_residual);
  m.impl("rotary_embedding", &pagedllm::rotary_embedding);
  m.impl("silu_and_mul", &pagedllm::silu_and_mul);
  m.impl("gelu_tanh_and_mul", &pagedllm::gelu_tanh_and_mul);
}
