// Paged attention for CPUs over a mixed batch of prefill chunks and decodes, reading K/V in place
// through the block table (no gather copy).
//
// Request r owns query rows query_start_loc[r] .. query_start_loc[r+1]: the last nq of its
// seq_lens[r] tokens, so query i sits at position p = seq_len - nq + i and attends causally to
// keys 0..p (and only to keys > p - window with a sliding window). One work item is (request,
// KV head, tile of query rows); all query heads sharing the KV head are computed together so
// each key and value row is read once per tile. Softmax is online (running max and sum) over
// blocks of the cache, in float32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"
#include "vec/vec.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>


namespace {

namespace vec = pagedllm::vec;

constexpr int64_t kQueryTile = 8;

// Cache elements are float (the model dtype) or at::Half (--kv-cache-dtype fp16: half the bytes
// to stream, and decode attention over a long batch is bound by reading the cache).
template <typename T>
struct TypeTag {
  using type = T;
};
inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }

template <typename CT>
inline float dot(const float* a, const CT* b, int64_t d) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) s += a[i] * to_float(b[i]);
  return s;
}

// Head sizes known at compile time (D a multiple of 16): two 8-lane FMA chains over the even
// and odd 8-column slices, summed and reduced by vec::reduce_add.
template <int D, typename CT>
inline float dot_fixed(const float* a, const CT* b) {
  vec::F8 s0 = vec::zero(), s1 = vec::zero();
  for (int i = 0; i < D; i += 16) {
    s0 = vec::fma(vec::load(a + i), vec::load(b + i), s0);
    if (i + 8 < D) s1 = vec::fma(vec::load(a + i + 8), vec::load(b + i + 8), s1);
  }
  return vec::reduce_add(s0 + s1);
}

// a[0:D] = a * correction + sum_j p[j] v_j, the accumulator held in registers over the block.
template <int D, typename CT>
inline void accumulate_fixed(float* a, float correction, const float* p, const CT* v,
                             int64_t v_stride, int64_t n) {
  vec::F8 acc[D / 8];
  const vec::F8 c = vec::set1(correction);
  for (int i = 0; i < D / 8; ++i) acc[i] = vec::load(a + 8 * i) * c;
  for (int64_t j = 0; j < n; ++j) {
    if (p[j] == 0.f) continue;  // masked (or underflowed: contributes nothing)
    const vec::F8 pj = vec::set1(p[j]);
    const CT* vj = v + j * v_stride;
    for (int i = 0; i < D / 8; ++i) acc[i] = vec::fma(pj, vec::load(vj + 8 * i), acc[i]);
  }
  for (int i = 0; i < D / 8; ++i) vec::store(a + 8 * i, acc[i]);
}

template <int D, typename CT>  // D == 0: any head size
inline float dot_d(const float* a, const CT* b, int64_t d) {
  if constexpr (D > 0) return dot_fixed<D>(a, b);
  return dot(a, b, d);
}

template <int D, typename CT>
inline void accumulate_d(float* a, float correction, const float* p, const CT* v,
                         int64_t v_stride, int64_t n, int64_t d) {
  if constexpr (D > 0) return accumulate_fixed<D>(a, correction, p, v, v_stride, n);
  for (int64_t i = 0; i < d; ++i) a[i] *= correction;
  for (int64_t j = 0; j < n; ++j) {
    if (p[j] == 0.f) continue;
    const CT* vj = v + j * v_stride;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) a[i] += p[j] * to_float(vj[i]);
  }
}

// s[j] <- exp(s[j] - max) for j < n (masked -inf scores become exactly 0); returns the sum.
inline float exp_shifted(float* s, int64_t n, float max) {
  float sum = 0.f;
  int64_t j = 0;
  const vec::F8 mx = vec::set1(max);
  const vec::F8 neg_inf = vec::set1(-std::numeric_limits<float>::infinity());
  vec::F8 acc = vec::zero();
  for (; j + 8 <= n; j += 8) {
    const vec::F8 v = vec::load(s + j);
    const vec::F8 p = vec::zero_where(vec::equal(v, neg_inf), vec::exp(v - mx));
    vec::store(s + j, p);
    acc = acc + p;
  }
  float lanes[8];
  vec::store(lanes, acc);
  for (float v : lanes) sum += v;
  for (; j < n; ++j) {
    s[j] = s[j] == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(s[j] - max);
    sum += s[j];
  }
  return sum;
}


}  // namespace

namespace pagedllm {

AttentionPlan plan_attention(const at::Tensor& block_table, const at::Tensor& seq_lens,
                             const at::Tensor& query_start_loc) {
  AttentionPlan plan{block_table.to(at::kInt).contiguous(), seq_lens.to(at::kInt).contiguous(),
                     query_start_loc.to(at::kInt).contiguous(), {}, {}};
  const int* qslp = plan.query_start_loc.data_ptr<int>();
  for (int64_t r = 0; r < plan.seq_lens.size(0); ++r) {
    const int64_t nq = qslp[r + 1] - qslp[r];
    for (int64_t t0 = 0; t0 < nq; t0 += kQueryTile) {
      plan.item_req.push_back(r);
      plan.item_tile.push_back(t0);
    }
  }
  return plan;
}

namespace {
bool is_half_cache(const at::Tensor& cache) {
  TORCH_CHECK(cache.scalar_type() == at::kFloat || cache.scalar_type() == at::kHalf,
              "paged_attention: a float32 or float16 cache expected");
  TORCH_CHECK(cache.is_contiguous(), "paged_attention: a contiguous cache expected");
  return cache.scalar_type() == at::kHalf;
}
}  // namespace

PagedCache paged_cache(const at::Tensor& key_cache, const at::Tensor& value_cache) {
  const bool half = is_half_cache(key_cache);
  TORCH_CHECK(is_half_cache(value_cache) == half && key_cache.dim() == 4);
  return {key_cache.data_ptr(), value_cache.data_ptr(), half, key_cache.size(1),
          key_cache.size(2), key_cache.size(3)};
}

PagedCache paged_cache(const at::Tensor& kv_cache) {
  // (the halves as pointers: select() would build two tensors per layer per step)
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2, "a [2, blocks, ...] cache expected");
  const char* key = static_cast<const char*>(kv_cache.data_ptr());
  return {key, key + kv_cache.stride(0) * kv_cache.element_size(), is_half_cache(kv_cache),
          kv_cache.size(2), kv_cache.size(3), kv_cache.size(4)};
}

void paged_attention_rows(const AttentionPlan& plan, const float* qp, int64_t q_stride, int64_t H,
                          const PagedCache& cache, double scale, int64_t sliding_window,
                          double soft_cap, float* op, int64_t out_stride) {
  const int64_t D = cache.head_dim, block_size = cache.block_size, Hkv = cache.num_kv_heads;
  TORCH_CHECK(H % Hkv == 0);
  const int64_t group = H / Hkv, max_blocks = plan.block_table.size(1);
  const int* qslp = plan.query_start_loc.data_ptr<int>();
  const int* slp = plan.seq_lens.data_ptr<int>();
  const int* btp = plan.block_table.data_ptr<int>();
  const std::vector<int64_t>& item_req = plan.item_req;
  const std::vector<int64_t>& item_tile = plan.item_tile;
  // Work items: (request, kv head, query tile).
  const int64_t items = static_cast<int64_t>(item_req.size()) * Hkv;
  const float fscale = static_cast<float>(scale);
  const float cap = static_cast<float>(soft_cap);
  const int64_t slot_stride = Hkv * D, block_stride = block_size * slot_stride;

  // HD: the head size as a compile-time constant for the common sizes (registers hold q and the
  // output accumulator), 0 for any other
  // CT: the cache's element type.
  auto attend = [&](auto head_dim_tag, auto cache_tag) {
  constexpr int HD = decltype(head_dim_tag)::value;
  using CT = typename decltype(cache_tag)::type;
  const CT* kp = static_cast<const CT*>(cache.key);
  const CT* vp = static_cast<const CT*>(cache.value);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const int64_t rows = kQueryTile * group;  // (query, head) pairs of one item
    // per-thread scratch, kept between calls (no allocation per layer)
    thread_local std::vector<float> acc, m, l, s;
    acc.resize(rows * D);
    m.resize(rows);
    l.resize(rows);
    s.resize(rows * block_size);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t r = item_req[it / Hkv], t0 = item_tile[it / Hkv], kvh = it % Hkv;
      const int64_t start = qslp[r], nq = qslp[r + 1] - start, seq_len = slp[r];
      const int64_t tn = std::min(kQueryTile, nq - t0);
      const int64_t first_pos = seq_len - nq + t0;  // position of the tile's first query
      const int64_t last_pos = first_pos + tn - 1;
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      // keys the tile can see: [lo, last_pos]
      int64_t lo = 0;
      if (sliding_window > 0) lo = std::max<int64_t>(0, first_pos - sliding_window + 1);
      for (int64_t blk = lo / block_size; blk * block_size <= last_pos; ++blk) {
        TORCH_CHECK(blk < max_blocks, "block table too short");
        const int64_t phys = btp[r * max_blocks + blk];
        const int64_t k0 = blk * block_size;
        const int64_t kn = std::min(block_size, last_pos + 1 - k0);
        for (int64_t ti = 0; ti < tn; ++ti) {
          const int64_t pos = first_pos + ti;
          // the keys of this block up to the row's own position: how many depends on the row
          // alone, not on the rows that share its tile, so its softmax sums (8 lanes, then a
          // scalar tail) associate the same way in a prefill, a chunk or a decode
          const int64_t row_kn = std::min(kn, pos + 1 - k0);
          if (row_kn <= 0) continue;
          for (int64_t g = 0; g < group; ++g) {
            const int64_t row = ti * group + g;
            const float* qv = qp + (start + t0 + ti) * q_stride + (kvh * group + g) * D;
            float* srow = s.data() + row * block_size;
            float block_max = -std::numeric_limits<float>::infinity();
            for (int64_t j = 0; j < row_kn; ++j) {
              const int64_t kpos = k0 + j;
              const bool visible =
                  kpos <= pos && (sliding_window <= 0 || kpos > pos - sliding_window);
              if (!visible) {
                srow[j] = -std::numeric_limits<float>::infinity();
                continue;
              }
              float score =
                  fscale * dot_d<HD>(qv, kp + phys * block_stride + j * slot_stride + kvh * D, D);
              if (cap > 0.f) score = cap * std::tanh(score / cap);
              srow[j] = score;
              block_max = std::max(block_max, score);
            }
            if (block_max == -std::numeric_limits<float>::infinity()) continue;
            const float new_max = std::max(m[row], block_max);
            const float correction = std::exp(m[row] - new_max);
            float* a = acc.data() + row * D;
            const float sum = exp_shifted(srow, row_kn, new_max);
            accumulate_d<HD>(a, correction, srow, vp + phys * block_stride + kvh * D, slot_stride,
                             row_kn, D);
            l[row] = std::fma(l[row], correction, sum);  // as SIMD builds contract it
            m[row] = new_max;
          }
        }
      }
      for (int64_t ti = 0; ti < tn; ++ti) {
        for (int64_t g = 0; g < group; ++g) {
          const int64_t row = ti * group + g;
          const float inv = l[row] > 0.f ? 1.f / l[row] : 0.f;
          float* o = op + (start + t0 + ti) * out_stride + (kvh * group + g) * D;
          const float* a = acc.data() + row * D;
          for (int64_t d = 0; d < D; ++d) o[d] = a[d] * inv;
        }
      }
    }
  });
  };
  auto with_head_dim = [&](auto cache_tag) {
    switch (D) {
      case 64: attend(std::integral_constant<int, 64>{}, cache_tag); break;
      case 128: attend(std::integral_constant<int, 128>{}, cache_tag); break;
      case 256: attend(std::integral_constant<int, 256>{}, cache_tag); break;
      default: attend(std::integral_constant<int, 0>{}, cache_tag); break;
    }
  };
  if (cache.half) {
    with_head_dim(TypeTag<at::Half>{});
  } else {
    with_head_dim(TypeTag<float>{});
  }
}

at::Tensor paged_attention(const at::Tensor& query,        // [T, H, D] float32
                           const at::Tensor& key_cache,    // [num_blocks, block_size, Hkv, D]
                           const at::Tensor& value_cache,  // [num_blocks, block_size, Hkv, D]
                           const at::Tensor& block_table,  // [R, max_blocks] int32
                           const at::Tensor& seq_lens,     // [R] int32
                           const at::Tensor& query_start_loc,  // [R + 1] int32
                           double scale, int64_t sliding_window, double soft_cap) {
  TORCH_CHECK(query.scalar_type() == at::kFloat, "paged_attention: a float32 query expected");
  const PagedCache cache = paged_cache(key_cache, value_cache);
  const at::Tensor q = query.contiguous();
  TORCH_CHECK(q.dim() == 3 && q.size(2) == cache.head_dim);
  at::Tensor out = at::empty_like(q);
  const int64_t H = q.size(1), row = H * q.size(2);
  paged_attention_rows(plan_attention(block_table, seq_lens, query_start_loc),
                       q.data_ptr<float>(), row, H, cache, scale, sliding_window, soft_cap,
                       out.data_ptr<float>(), row);
  return out;
}

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("paged_attention(Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_table, "
        "Tensor seq_lens, Tensor query_start_loc, float scale, int sliding_window, "
        "float soft_cap) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("paged_attention", &pagedllm::paged_attention);
}
