// Row-wise argmax of float32 logits [B, V] with torch.argmax(dim=-1)'s answer: the first maximum,
// and a NaN counts as the maximum (the first NaN wins). ATen's argmax reduction runs ~2.4 ns per
// element on this CPU (117 us for one row of a 49152-token vocabulary, 410 us for 8 rows) while
// its max runs ~0.15 ns, so this takes two vector passes: the row's maximum, then its first
// index. Every greedy token and every random draw (the exponential race) ends here.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "vec/vec.h"

namespace {

int64_t first_nan(const float* x, int64_t V) {
  for (int64_t i = 0; i < V; ++i)
    if (std::isnan(x[i])) return i;
  return -1;
}

int64_t argmax_row(const float* x, int64_t V) {
  namespace vec = pagedllm::vec;
  int64_t i = 0;
  float best = -INFINITY;
  vec::F8 vmax = vec::set1(-INFINITY);
  vec::F8 nan = vec::zero();  // lanes that saw a NaN (all bits set)
  for (; i + 8 <= V; i += 8) {
    const vec::F8 v = vec::load(x + i);
    vmax = vec::max(vmax, v);
    nan = nan | vec::unordered(v, v);
  }
  if (vec::mask_bits(nan)) return first_nan(x, V);
  float lanes[8];
  vec::store(lanes, vmax);
  for (float lane : lanes) best = std::max(best, lane);
  for (int64_t j = i; j < V; ++j) {
    if (std::isnan(x[j])) return first_nan(x, V);
    best = std::max(best, x[j]);
  }
  int64_t k = 0;
  const vec::F8 target = vec::set1(best);
  for (; k + 8 <= V; k += 8) {
    const int mask = vec::mask_bits(vec::equal(vec::load(x + k), target));
    if (mask) return k + __builtin_ctz(static_cast<unsigned>(mask));
  }
  for (; k < V; ++k)
    if (x[k] == best) return k;
  return 0;  // V == 0 is rejected by the caller; an all -inf row matches at its first index
}

}  // namespace

namespace pagedllm {

at::Tensor argmax_rows(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat,
              "argmax_rows: float32 [B, V]");
  TORCH_CHECK(logits.size(1) > 0, "argmax_rows: empty rows");
  const at::Tensor x = logits.contiguous();
  const int64_t B = x.size(0), V = x.size(1);
  at::Tensor out = at::empty({B}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, B, 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) op[b] = argmax_row(xp + b * V, V);
  });
  return out;
}

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) { m.def("argmax_rows(Tensor logits) -> Tensor"); }

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) { m.impl("argmax_rows", &pagedllm::argmax_rows); }
