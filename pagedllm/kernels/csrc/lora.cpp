// Multi-LoRA rows (lora/layers.py LoRALinear): y[t] += (a[s] x[t]) b[s] for each token t whose
// adapter slot s = slots[t] is in [0, num_slots) (other tokens run the base model: untouched).
//
//   a [num_slots, width, in]    each slot's A of every output slice, stacked (width = S * R)
//   b [num_slots, width, out]   each slot's scaled B, transposed (row j: what h[j] adds to y)
//
// One token at a time, in place: no gather or scatter of rows, no grouping of the batch, and a
// token's numbers do not depend on its neighbours (batch invariance). The low-rank work is a few
// percent of the base layer's; done with ATen per adapter it cost more than the layer itself
// (a dozen small GEMM calls and row copies per linear per step).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "ops.h"
#include "vec/vec.h"

namespace {

namespace vec = pagedllm::vec;

float dot(const float* a, const float* x, int64_t n) {
  vec::F8 acc0 = vec::zero(), acc1 = vec::zero();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    acc0 = vec::fma(vec::load(a + k), vec::load(x + k), acc0);
    acc1 = vec::fma(vec::load(a + k + 8), vec::load(x + k + 8), acc1);
  }
  for (; k + 8 <= n; k += 8) acc0 = vec::fma(vec::load(a + k), vec::load(x + k), acc0);
  float sum = vec::reduce_add(acc0 + acc1);
  // NOTE: std::fma in the tails, not a * b + c, which SIMD builds contract into an FMA and the
  // portable build does not: every build then gives the same bits (tests/test_kernel_isas.py)
  for (; k < n; ++k) sum = std::fma(a[k], x[k], sum);
  return sum;
}

void axpy(float h, const float* b, float* y, int64_t n) {
  const vec::F8 hv = vec::set1(h);
  int64_t o = 0;
  for (; o + 8 <= n; o += 8) vec::store(y + o, vec::fma(hv, vec::load(b + o), vec::load(y + o)));
  for (; o < n; ++o) y[o] = std::fma(h, b[o], y[o]);
}

}  // namespace

namespace pagedllm {

void lora_add_rows_into(float* y, int64_t y_stride, const float* x, int64_t x_stride, int64_t T,
                        const at::Tensor& a, const at::Tensor& b, const int64_t* slots) {
  const int64_t num_slots = a.size(0), width = a.size(1), in = a.size(2), out = b.size(2);
  const float* ap = a.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> h(width);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t s = slots[t];
      if (s < 0 || s >= num_slots) continue;
      const float* as = ap + s * width * in;
      const float* bs = bp + s * width * out;
      for (int64_t j = 0; j < width; ++j) h[j] = dot(as + j * in, x + t * x_stride, in);
      for (int64_t j = 0; j < width; ++j)
        if (h[j] != 0.0f) axpy(h[j], bs + j * out, y + t * y_stride, out);  // (0: rank padding)
    }
  });
}

at::Tensor lora_add_rows(at::Tensor y, const at::Tensor& x, const at::Tensor& a,
                         const at::Tensor& b, const at::Tensor& slots) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0), "lora_add_rows: [T, in], "
              "[T, out] rows expected");
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(1) == b.size(1) &&
              a.size(2) == x.size(1) && b.size(2) == y.size(1),
              "lora_add_rows: a [slots, width, in], b [slots, width, out] expected");
  for (const at::Tensor* t : {static_cast<const at::Tensor*>(&y), &x, &a, &b})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->stride(-1) == 1,
                "lora_add_rows: float32 rows expected");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "lora_add_rows: contiguous a and b");
  const at::Tensor s = slots.to(at::kLong).contiguous();
  TORCH_CHECK(s.numel() == x.size(0), "lora_add_rows: one slot per row");
  lora_add_rows_into(y.data_ptr<float>(), y.stride(0), x.data_ptr<float>(), x.stride(0),
                     x.size(0), a, b, s.data_ptr<int64_t>());
  return y;
}

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("lora_add_rows(Tensor(a!) y, Tensor x, Tensor a, Tensor b, Tensor slots) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) { m.impl("lora_add_rows", &pagedllm::lora_add_rows); }
