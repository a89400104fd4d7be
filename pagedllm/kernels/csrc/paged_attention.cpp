// Paged attention for CPUs over a mixed batch of prefill chunks and decodes, reading K/V in place
// through the block table (no gather copy).
//
// Request r owns query rows query_start_loc[r] .. query_start_loc[r+1]: the last nq of its
// seq_lens[r] tokens, so query i sits at position p = seq_len - nq + i and attends causally to
// keys 0..p (and only to keys > p - window with a sliding window). One work item is (request,
// KV head, tile of query rows); all query heads sharing the KV head are computed together so
// each key and value row is read once per tile. Softmax is online (running max and sum) over
// chunks of 16 key positions, in float32.
//
// Per row and chunk: the 16 scores as two 8-lane vectors (scores16_heads: 8 keys' dot products in
// 16-lane partial sums, reduced together, no horizontal sum per key), their max and exponentials
// in vectors, and the P.V step as broadcast weights times value rows into an accumulator held in
// registers (several rows at once where registers allow). A chunk that every row of a tile sees
// whole takes each of these steps for all the tile's rows before the next (their independent
// work overlaps), the causal diagonal's chunk row by row. A row goes through the same operations
// in the same order whatever surrounds it (a prefill tile, a chunk of its prompt, a decode,
// another batch or thread count, either path: batch invariance), and every build (AVX-512, AVX2,
// portable) computes the same bits for the head sizes 64, 128 and 256. At these sizes the
// prefill is bound by the multiply-adds (2.9 ns per query head and key at D = 64 on a Zen 5
// core, ~86 GFLOP/s against the ~89 of its 512-bit FMAs; the kernel before took 5.8 ns).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"
#include "vec/vec.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>


namespace {

namespace vec = pagedllm::vec;

constexpr int64_t kQueryTile = 8;
// Keys per online-softmax step, at positions [16c, 16c + 16): the steps a row takes depend on
// its position alone (not on the tile, the chunking of its prompt or the cache block size).
constexpr int kKeyChunk = 16;
// A row's keys are split at the positions kSegmentKeys * s into segments, each its own online
// softmax (running max, sum and P.V from scratch) and its own work item, and the segments' results
// merged in order afterwards (merge_segments). So one long sequence's decode is as many items per
// KV head as it has segments, which threads share (one decode over 3 KV heads had been 3 items:
// 2 threads did 2 and 1), and a row's arithmetic still depends on its position alone: rows of up
// to kSegmentKeys keys take exactly the one pass they took before segments existed, longer ones
// the same segments and merge in a prefill tile as in a decode.
constexpr int64_t kSegmentKeys = 512;
static_assert(kSegmentKeys % kKeyChunk == 0);
constexpr int64_t kSegmentChunks = kSegmentKeys / kKeyChunk;
// Tiles of at most kSplitRows rows (decodes, short drafts) get one item per segment, their partial
// results kept for merge_segments; larger ones (prefill) take their segments in turn in one item
// and merge them as they go: the same merge, in the same order, so the same bits.
constexpr int64_t kSplitRows = 2;

// The segments a row at last_pos (or a tile whose last row is there) reaches.
inline int64_t segments_through(int64_t last_pos) { return last_pos / kSegmentKeys + 1; }

// out[0:d] = acc / l, a row's result from its online-softmax state (l = 0: no key, zeros)
inline void write_row(float* out, const float* acc, float l, int64_t d) {
  const float inv = l > 0.f ? 1.f / l : 0.f;
  for (int64_t i = 0; i < d; ++i) out[i] = acc[i] * inv;
}

// One segment's (or a merge's) online-softmax state of a row of one head: the running max m, the
// sum l of e^(s - m) and acc = sum e^(s - m) v. Folding a segment into `into` (segments in
// position order; `into` starts empty, m_into = -inf) gives the softmax over both; a segment with
// no visible key (m = -inf: a sliding window ends before it) adds nothing. std::fma and separate
// products keep the rounding the same in every build (no contraction left to the compiler).
inline void fold_segment(float* acc_into, float& m_into, float& l_into, const float* acc,
                         float m, float l, int64_t d) {
  if (m_into == -std::numeric_limits<float>::infinity()) {
    std::copy_n(acc, d, acc_into);
    m_into = m;
    l_into = l;
    return;
  }
  if (m == -std::numeric_limits<float>::infinity()) return;
  const float new_max = std::max(m_into, m);
  const float f_into = m_into == new_max ? 1.f : std::exp(m_into - new_max);
  const float f_seg = m == new_max ? 1.f : std::exp(m - new_max);
  l_into = std::fma(l_into, f_into, l * f_seg);
  for (int64_t i = 0; i < d; ++i) acc_into[i] = std::fma(acc_into[i], f_into, acc[i] * f_seg);
  m_into = new_max;
}
// Chunks ahead whose K and V rows are prefetched (1: decode over 64 requests of 512 tokens, which
// streams the cache from memory, takes 0.6x the time (fp16 0.4x); 2 or 3 gain nothing more).
constexpr int64_t kAhead = 1, kRing = kAhead + 1;
// Decode rows over a float32 cache also pull the chunk kFar ahead into L2 (vec::prefetch_l2):
// one query row per item does too little arithmetic per byte for the one-chunk L1 prefetch to
// hide the memory's latency, most of all on a busy machine (64 decodes of 260 keys, one layer:
// 0.75-0.85x the thread's CPU time; the 64-request workload's decode attention 0.94x, its output
// tok per CPU s 1.025-1.043x, benchmarks/results/offline_ab_attention_far_prefetch_*). Not for float16 rows (they already stream at half the bytes, and the
// extra instructions cost more than they hide) nor prefill tiles (each key serves up to
// kQueryTile rows). Prefetches change no arithmetic: the same bits. PAGEDLLM_ATTENTION_FAR_PREFETCH
// (read once; 0: off) sets the distance, for benchmarks/offline_ab.py to measure it against none.
int64_t far_prefetch_chunks() {
  static const int64_t chunks = [] {
    const char* env = std::getenv("PAGEDLLM_ATTENTION_FAR_PREFETCH");
    return env != nullptr ? std::max<int64_t>(0, std::atoll(env)) : int64_t{3};
  }();
  return chunks;
}

// Cache elements are float (the model dtype), at::Half (--kv-cache-dtype fp16: half the bytes
// to stream, and decode attention over a long batch is bound by reading the cache) or int8_t
// (--kv-cache-dtype int8: a quarter, each row with its scale; see dequantize_row below).
template <typename T>
struct TypeTag {
  using type = T;
};
inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }

// --kv-cache-dtype int8: a row is D int8 values then its float32 scale's 4 bytes
// (attention/ops/kv_quant.py). The kernel dequantizes a chunk's rows once, into float32 rows in
// L1 (dequantize_row), and runs the float32 path on them: every key serves a query head per GQA
// group (and up to kQueryTile queries in a prefill tile), so one conversion per chunk beats one
// per use, and the values are float(q) * scale, exactly load_kv's (an int8 -> float conversion is
// exact and the product rounds once, in every build). So the result is the same bits as the
// float32 kernel over load_kv's dequantized cache, at a quarter of the bytes to stream.
template <typename CT>
constexpr int64_t scale_bytes() {
  return std::is_same_v<CT, int8_t> ? 4 : 0;
}

// 16 int8 values as floats (exact)
inline vec::R16f r16_load_i8(const int8_t* p) {
#ifdef PAGEDLLM_VEC_512
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))};
#else
  return vec::r16_load(p);  // (8 at a time; a scalar loop through a stack buffer took longer
                            // than the float32 cache's whole kernel)
#endif
}

// out[0:d] = q[0:d] * scale (HD > 0: d == HD, in 16-lane vectors; the same products either way)
template <int HD>
inline void dequantize_row(const int8_t* q, int64_t d, float* out) {
  float scale;
  std::memcpy(&scale, q + d, sizeof(float));
  if constexpr (HD > 0) {
    const vec::R16f s = vec::r16_set1(scale);
    for (int c = 0; c < HD; c += 16) vec::r16_store(out + c, r16_load_i8(q + c) * s);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[i] = static_cast<float>(q[i]) * scale;
  }
}

template <typename CT>
inline float dot(const float* a, const CT* b, int64_t d) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) s += a[i] * to_float(b[i]);
  return s;
}

// The scores q . k_j of a chunk's 16 keys for G query heads of one KV head (the heads' rows of one
// query, HD apart in q) into s[g * kKeyChunk + j], for head sizes known at compile time (HD a
// multiple of 16). Each key's products are summed in 16 lanes (lane l: columns l, l + 16, ... in
// order, one fused multiply-add each; R16f is one 512-bit register with AVX-512, two 8-lane halves
// elsewhere, lane for lane the same operations), the lanes folded 16 -> 8, and each 8 keys reduced
// at once (the pairwise tree of vec::reduce_add_pairwise8) instead of one horizontal sum per key.
// Each key's row is loaded once for the G heads (a decode's tile is one query: otherwise its heads
// would each read the chunk's K rows). A score depends on q and k_j alone: the same bits in a
// prefill tile and in a decode, for any G, in every build.
template <int HD, int G, typename CT>
inline void scores16_heads(const float* q, const CT* const* k, float* s) {
  for (int half = 0; half < 2; ++half) {
    vec::F8 folded[G][8];
    for (int j = 0; j < 8; ++j) {
      const CT* kj = k[8 * half + j];
      vec::R16f acc[G];
      for (int g = 0; g < G; ++g) acc[g] = vec::r16_zero();
      for (int c = 0; c < HD; c += 16) {
        const vec::R16f kc = vec::r16_load(kj + c);
        for (int g = 0; g < G; ++g) acc[g] = vec::fma(vec::r16_load(q + g * HD + c), kc, acc[g]);
      }
      for (int g = 0; g < G; ++g) folded[g][j] = vec::r16_fold(acc[g]);
    }
    for (int g = 0; g < G; ++g) {
      vec::store(s + g * kKeyChunk + 8 * half, vec::reduce_add_pairwise8(folded[g]));
    }
  }
}

// scores16_heads for a group of any size, in slices of up to 4 heads (more would spill the
// accumulators out of registers).
template <int HD, typename CT>
inline void scores16_group(int64_t group, const float* q, const CT* const* k, float* s) {
  for (int64_t g0 = 0; g0 < group; g0 += 4) {
    const float* qg = q + g0 * HD;
    float* sg = s + g0 * kKeyChunk;
    switch (std::min<int64_t>(group - g0, 4)) {
      case 1: scores16_heads<HD, 1>(qg, k, sg); break;
      case 2: scores16_heads<HD, 2>(qg, k, sg); break;
      case 3: scores16_heads<HD, 3>(qg, k, sg); break;
      default: scores16_heads<HD, 4>(qg, k, sg); break;
    }
  }
}

// a[0:d] = a * correction + sum_j p[j] v_j over the keys j0 <= j < j1 of one chunk, all visible
// to the row (HD > 0: d == HD, the accumulator held in registers). correction == 1 (the running
// max unchanged) skips the multiply: a * 1 is a.
template <int HD, typename CT>
inline void accumulate_chunk(float* a, float correction, const float* p, const CT* const* v,
                             int64_t j0, int64_t j1, int64_t d) {
  if constexpr (HD > 0) {
    vec::R16f acc[HD / 16];
    for (int i = 0; i < HD / 16; ++i) acc[i] = vec::r16_load(a + 16 * i);
    if (correction != 1.f) {
      const vec::R16f c = vec::r16_set1(correction);
      for (int i = 0; i < HD / 16; ++i) acc[i] = acc[i] * c;
    }
    for (int64_t j = j0; j < j1; ++j) {
      const vec::R16f pj = vec::r16_set1(p[j]);
      for (int i = 0; i < HD / 16; ++i) {
        acc[i] = vec::fma(pj, vec::r16_load(v[j] + 16 * i), acc[i]);
      }
    }
    for (int i = 0; i < HD / 16; ++i) vec::r16_store(a + 16 * i, acc[i]);
  } else {
    if (correction != 1.f) {
      for (int64_t i = 0; i < d; ++i) a[i] *= correction;
    }
    for (int64_t j = j0; j < j1; ++j) {
      const CT* vj = v[j];
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) a[i] += p[j] * to_float(vj[i]);
    }
  }
}

// accumulate_chunk for R rows at once (R accumulators of HD, HD apart; p and correction per
// row, p kKeyChunk apart), each row through the same operations as alone, so the same bits:
// sharing each value load between the rows, and R times the independent multiply-add chains
// (one row's HD / 16 chains would wait on the FMA latency). Columns [c0, c0 + 16 N) only: a
// column's multiply-adds are the same whichever columns pass with it, so a row may go through in
// column slices (AVX2's 16 registers hold two rows' accumulators for 32 columns, not for 64).
template <int R, int N, typename CT>
inline void accumulate_rows_cols(float* a, int64_t hd, const float* correction, const float* p,
                                 const CT* const* v, int64_t j0, int64_t j1, int64_t c0) {
  vec::R16f acc[R][N];
  for (int r = 0; r < R; ++r) {
    const vec::R16f c = vec::r16_set1(correction[r]);  // (times 1: the same bits as skipped)
    for (int i = 0; i < N; ++i) acc[r][i] = vec::r16_load(a + r * hd + c0 + 16 * i) * c;
  }
  for (int64_t j = j0; j < j1; ++j) {
    vec::R16f pj[R];
    for (int r = 0; r < R; ++r) pj[r] = vec::r16_set1(p[r * kKeyChunk + j]);
    for (int i = 0; i < N; ++i) {
      const vec::R16f vj = vec::r16_load(v[j] + c0 + 16 * i);
      for (int r = 0; r < R; ++r) acc[r][i] = vec::fma(pj[r], vj, acc[r][i]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < N; ++i) vec::r16_store(a + r * hd + c0 + 16 * i, acc[r][i]);
  }
}

// Columns (in R16f) of one slice of accumulate_rows: all HD with 512-bit registers (32 of them),
// 32 columns elsewhere.
template <int HD>
constexpr int slice_r16() {
#ifdef PAGEDLLM_VEC_512
  return HD / 16;
#else
  return std::min(HD / 16, 2);
#endif
}

template <int HD, int R, typename CT>
inline void accumulate_rows(float* a, const float* correction, const float* p,
                            const CT* const* v, int64_t j0, int64_t j1) {
  constexpr int N = slice_r16<HD>();
  for (int64_t c0 = 0; c0 < HD; c0 += 16 * N) {
    accumulate_rows_cols<R, N>(a, HD, correction, p, v, j0, j1, c0);
  }
}

// Rows accumulate_rows takes at once: their accumulators in about half the vector registers.
// With 256-bit registers only a prefill tile's rows (`tile`: more than one query) go two at a
// time, in 32-column slices: 8 of the 16 ymm registers, each value load serving two rows (a
// 512-row prefill's attention 0.96x the time of one row at a time; three rows at once 1.05x, as
// they spill). A decode's rows, whose value rows come from memory, took longer two at a time (64
// decodes of 208 keys, 1.16x).
template <int HD>
constexpr int rows_at_once(bool tile) {
#ifdef PAGEDLLM_VEC_512
  (void)tile;
  return HD > 0 ? std::max(1, 16 / (HD / 16)) : 1;  // 32 zmm registers, one per 16 floats
#else
  return HD > 0 && tile ? 2 : 1;
#endif
}

// The P.V step of n consecutive rows that see the same keys j0 <= j < j1 of the chunk (one
// query's heads, or a whole tile's rows of a chunk they all see whole), as many at once as
// rows_at_once allows.
template <int HD, int kMax, typename CT>
inline void accumulate_query_rows(float* a, const float* correction, const float* p,
                                  const CT* const* v, int64_t j0, int64_t j1, int64_t n,
                                  int64_t d) {
  int64_t r = 0;
  if constexpr (HD > 0 && kMax > 1) {
    for (; r + kMax <= n; r += kMax) {
      accumulate_rows<HD, kMax>(a + r * HD, correction + r, p + r * kKeyChunk, v, j0, j1);
    }
    if constexpr (kMax >= 4) {
      if (n - r == 3) {
        accumulate_rows<HD, 3>(a + r * HD, correction + r, p + r * kKeyChunk, v, j0, j1);
        return;
      }
    }
    if constexpr (kMax >= 3) {
      if (n - r == 2) {
        accumulate_rows<HD, 2>(a + r * HD, correction + r, p + r * kKeyChunk, v, j0, j1);
        return;
      }
    }
  }
  for (; r < n; ++r) {
    accumulate_chunk<HD>(a + r * d, correction[r], p + r * kKeyChunk, v, j0, j1, d);
  }
}

// The P.V step of n consecutive rows after their softmax steps, `live` of which (live_row[r])
// had a finite score: all of them through accumulate_query_rows (tile: the rows span more than
// one query, see rows_at_once), else each live row alone. Both paths of a chunk take it.
template <int HD, typename CT>
inline void pv_step(float* a, const float* correction, const float* p, const CT* const* v,
                    int64_t j0, int64_t j1, int64_t n, int64_t live, const char* live_row,
                    bool tile, int64_t d) {
  if (live == n) {
    if (tile) {
      accumulate_query_rows<HD, rows_at_once<HD>(true)>(a, correction, p, v, j0, j1, n, d);
    } else {
      accumulate_query_rows<HD, rows_at_once<HD>(false)>(a, correction, p, v, j0, j1, n, d);
    }
    return;
  }
  for (int64_t r = 0; r < n; ++r) {
    if (!live_row[r]) continue;
    accumulate_chunk<HD>(a + r * d, correction[r], p + r * kKeyChunk, v, j0, j1, d);
  }
}

}  // namespace

namespace pagedllm {

AttentionPlan plan_attention(const at::Tensor& block_table, const at::Tensor& seq_lens,
                             const at::Tensor& query_start_loc) {
  AttentionPlan plan;
  plan.block_table = block_table.to(at::kInt).contiguous();
  plan.seq_lens = seq_lens.to(at::kInt).contiguous();
  plan.query_start_loc = query_start_loc.to(at::kInt).contiguous();
  plan.work_before.push_back(0);
  const int* qslp = plan.query_start_loc.data_ptr<int>();
  const int* slp = plan.seq_lens.data_ptr<int>();
  for (int64_t r = 0; r < plan.seq_lens.size(0); ++r) {
    const int64_t nq = qslp[r + 1] - qslp[r];
    for (int64_t t0 = 0; t0 < nq; t0 += kQueryTile) {
      const int64_t tn = std::min(kQueryTile, nq - t0), keys = slp[r] - nq + t0 + tn;
      const int64_t segments = segments_through(keys - 1);
      if (segments == 1 || tn > kSplitRows) {  // one item: every segment, merged as it goes
        plan.item_req.push_back(r);
        plan.item_tile.push_back(t0);
        plan.item_seg.push_back(-1);
        plan.item_partial.push_back(-1);
        // its rows times the keys of its last row (plus a chunk's worth for the fixed costs)
        plan.work_before.push_back(plan.work_before.back() + tn * (keys + kKeyChunk));
        continue;
      }
      plan.merges.push_back(static_cast<int64_t>(plan.item_req.size()));
      const int64_t partial = plan.partial_records;
      plan.partial_records += tn * segments;
      for (int64_t seg = 0; seg < segments; ++seg) {
        plan.item_req.push_back(r);
        plan.item_tile.push_back(t0);
        plan.item_seg.push_back(seg);
        plan.item_partial.push_back(partial);
        const int64_t seg_keys = std::min(keys, (seg + 1) * kSegmentKeys) - seg * kSegmentKeys;
        plan.work_before.push_back(plan.work_before.back() + tn * (seg_keys + kKeyChunk));
      }
    }
  }
  return plan;
}

namespace {
at::ScalarType cache_type(const at::Tensor& cache) {
  const at::ScalarType t = cache.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kChar,
              "paged_attention: a float32, float16 or int8 cache expected");
  TORCH_CHECK(cache.is_contiguous(), "paged_attention: a contiguous cache expected");
  return t;
}

// head_dim from the cache's last dim (an int8 row carries its scale's 4 bytes after the values)
PagedCache make_cache(const void* key, const void* value, at::ScalarType t, int64_t block_size,
                      int64_t num_kv_heads, int64_t last_dim) {
  const bool int8 = t == at::kChar;
  TORCH_CHECK(!int8 || last_dim > 4, "paged_attention: an int8 cache's rows are D + 4 bytes");
  return {key, value, t == at::kHalf, block_size, num_kv_heads, int8 ? last_dim - 4 : last_dim,
          int8};
}
}  // namespace

PagedCache paged_cache(const at::Tensor& key_cache, const at::Tensor& value_cache) {
  const at::ScalarType t = cache_type(key_cache);
  TORCH_CHECK(cache_type(value_cache) == t && key_cache.dim() == 4 &&
              value_cache.sizes() == key_cache.sizes());
  return make_cache(key_cache.data_ptr(), value_cache.data_ptr(), t, key_cache.size(1),
                    key_cache.size(2), key_cache.size(3));
}

PagedCache paged_cache(const at::Tensor& kv_cache) {
  // (the halves as pointers: select() would build two tensors per layer per step)
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2, "a [2, blocks, ...] cache expected");
  const char* key = static_cast<const char*>(kv_cache.data_ptr());
  return make_cache(key, key + kv_cache.stride(0) * kv_cache.element_size(),
                    cache_type(kv_cache), kv_cache.size(2), kv_cache.size(3), kv_cache.size(4));
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
  // Work items: (query tile, KV head).
  const int64_t items = static_cast<int64_t>(item_req.size()) * Hkv;
  const float fscale = static_cast<float>(scale);
  const float cap = static_cast<float>(soft_cap);
  const vec::F8 vscale = vec::set1(fscale);
  const vec::F8 neg_inf = vec::set1(-std::numeric_limits<float>::infinity());
  constexpr float kInf = std::numeric_limits<float>::infinity();

  // HD: the head size as a compile-time constant for the common sizes (registers hold q and the
  // output accumulator), 0 for any other
  // CT: the cache's element type; RT: the rows' type the arithmetic reads (float for an int8
  // cache, whose rows are dequantized per chunk).
  auto attend = [&](auto head_dim_tag, auto cache_tag) {
  constexpr int HD = decltype(head_dim_tag)::value;
  using CT = typename decltype(cache_tag)::type;
  constexpr bool kInt8 = std::is_same_v<CT, int8_t>;
  using RT = std::conditional_t<kInt8, float, CT>;
  const CT* kp = static_cast<const CT*>(cache.key);
  const CT* vp = static_cast<const CT*>(cache.value);
  const int64_t row_elems = D + scale_bytes<CT>();  // one slot's row of one head, in CT
  const int64_t slot_stride = Hkv * row_elems, block_stride = block_size * slot_stride;
  // the rows of keys the tile cannot reach (the fixed head sizes score them with the chunk's
  // other keys, then mask them; they may lie in blocks the request does not own); never read
  // for other head sizes, nor as values
  alignas(64) static const CT zeros[256] = {};
  alignas(64) static const float zeros_f[256] = {};
  const int64_t row_bytes = row_elems * static_cast<int64_t>(sizeof(CT));
  const int64_t far = far_prefetch_chunks();
  // the split tiles' segment states: record (row ti, segment sg) of the tile whose records start
  // at `partial`, for head h: D accumulator values, then m and l
  std::vector<float> partials(plan.partial_records * H * (D + 2));
  auto partial_record = [&](int64_t partial, int64_t ti, int64_t nseg, int64_t sg, int64_t h) {
    return partials.data() + ((partial + ti * nseg + sg) * H + h) * (D + 2);
  };
  const std::vector<int64_t>& item_seg = plan.item_seg;
  const std::vector<int64_t>& item_partial = plan.item_partial;
  auto run_items = [&](int64_t begin, int64_t end) {
    const int64_t rows = kQueryTile * group;  // (query, head) pairs of one item
    // per-thread scratch, kept between calls (no allocation per layer), used through plain
    // pointers: every access to a thread_local of this shared library calls __tls_get_addr
    // (with a vzeroupper before it), which the softmax loop did three times per row and chunk
    thread_local std::vector<float> acc_buf, m_buf, l_buf, sp_buf, corr_buf;
    thread_local std::vector<float> macc_buf, mm_buf, ml_buf;  // a many-segment tile's merge
    thread_local std::vector<char> live_buf;
    // an int8 cache's current chunk, dequantized: its K rows, then its V rows
    thread_local std::vector<float> deq_buf;
    acc_buf.resize(rows * D);
    m_buf.resize(rows);
    l_buf.resize(rows);
    macc_buf.resize(rows * D);
    mm_buf.resize(rows);
    ml_buf.resize(rows);
    sp_buf.resize(rows * kKeyChunk);
    corr_buf.resize(rows);
    live_buf.resize(rows);
    if constexpr (kInt8) deq_buf.resize(2 * kKeyChunk * D);
    float* const acc = acc_buf.data();
    float* const m = m_buf.data();
    float* const l = l_buf.data();
    float* const macc = macc_buf.data();  // (the merge so far: acc, m, l)
    float* const mm = mm_buf.data();
    float* const ml = ml_buf.data();
    float* const sp = sp_buf.data();  // the tile's rows: scores, then softmax weights
    float* const corr = corr_buf.data();
    char* const live_row = live_buf.data();
    float* const deq = deq_buf.data();
    // The online-softmax step of (query, head) row `row` over its chunk's scores s0, s1 (masked
    // lanes -inf): the weights into s[0:16], the correction of its running state into `correction`;
    // false, changing nothing, where no lane is finite.
    auto softmax_step = [&](int64_t row, float* s, vec::F8 s0, vec::F8 s1, float& correction) {
      const float block_max = vec::reduce_max(vec::max(s0, s1));
      if (block_max == -kInf) return false;
      const float new_max = std::max(m[row], block_max);
      // (e^0 is exactly 1: skipping the call when the running max stands changes no bit)
      correction = new_max == m[row] ? 1.f : std::exp(m[row] - new_max);
      const vec::F8 mx = vec::set1(new_max);
      // masked -inf scores become exactly 0
      const vec::F8 p0 = vec::zero_where(vec::equal(s0, neg_inf), vec::exp(s0 - mx));
      const vec::F8 p1 = vec::zero_where(vec::equal(s1, neg_inf), vec::exp(s1 - mx));
      vec::store(s, p0);  // s now holds the row's weights
      vec::store(s + 8, p1);
      const float sum = vec::reduce_add(p0 + p1);
      l[row] = std::fma(l[row], correction, sum);  // as SIMD builds contract it
      m[row] = new_max;
      return true;
    };
    const RT* deq_k[kKeyChunk];
    const RT* deq_v[kKeyChunk];
    const CT* ring_k[kRing][kKeyChunk];  // the rows of chunks c .. c + kAhead
    const CT* ring_v[kRing][kKeyChunk];
    for (int64_t it = begin; it < end; ++it) {
      const int64_t e = it / Hkv, kvh = it % Hkv;
      const int64_t r = item_req[e], t0 = item_tile[e], seg = item_seg[e];
      const int64_t start = qslp[r], nq = qslp[r + 1] - start, seq_len = slp[r];
      const int64_t tn = std::min(kQueryTile, nq - t0);
      const int64_t first_pos = seq_len - nq + t0;  // position of the tile's first query
      const int64_t last_pos = first_pos + tn - 1;
      TORCH_CHECK(last_pos / block_size < max_blocks, "block table too short");
      // keys the tile can see: [lo, last_pos]
      int64_t lo = 0;
      if (sliding_window > 0) lo = std::max<int64_t>(0, first_pos - sliding_window + 1);
      // f(j, offset) for each key j of the chunk at k0 that the tile can see, with its K/V row's
      // offset in this KV head's cache, walking the block table (one division per chunk: a
      // 64-bit idiv per key took about as long as the prefetches)
      auto visible_rows = [&](int64_t k0, auto&& f) {
        const int64_t j0 = std::max<int64_t>(lo - k0, 0);
        const int64_t j1 = std::min<int64_t>(kKeyChunk, last_pos + 1 - k0);
        int64_t blk = (k0 + j0) / block_size, off = (k0 + j0) % block_size;
        for (int64_t j = j0; j < j1; ++j) {
          f(j, btp[r * max_blocks + blk] * block_stride + off * slot_stride + kvh * row_elems);
          if (++off == block_size) {
            off = 0;
            ++blk;
          }
        }
      };
      // the K and V rows of this KV head of the chunk at k0, read in place through the block
      // table; keys the tile cannot see point at zeros
      auto chunk_rows = [&](int64_t k0, const CT** kr, const CT** vr, bool prefetch) {
        std::fill_n(kr, kKeyChunk, zeros);
        std::fill_n(vr, kKeyChunk, zeros);
        visible_rows(k0, [&](int64_t j, int64_t at) {
          kr[j] = kp + at;
          vr[j] = vp + at;
          if (prefetch) {
            for (int64_t b = 0; b < row_bytes; b += 64) {
              vec::prefetch(reinterpret_cast<const char*>(kr[j]) + b);
              vec::prefetch(reinterpret_cast<const char*>(vr[j]) + b);
            }
          }
        });
      };
      // the segments this item takes (seg < 0: all of them, in order)
      const int64_t nseg = segments_through(last_pos);
      if (nseg > 1 && seg < 0) std::fill_n(mm, rows, -kInf);  // nothing folded yet
      const int64_t s_begin = seg < 0 ? 0 : seg, s_end = seg < 0 ? nseg : seg + 1;
      for (int64_t sg = s_begin; sg < s_end; ++sg) {
      std::fill_n(acc, tn * group * D, 0.f);
      std::fill_n(m, rows, -kInf);
      std::fill_n(l, rows, 0.f);
      const int64_t c_first = std::max(lo / kKeyChunk, sg * kSegmentChunks);
      const int64_t c_last = std::min(last_pos / kKeyChunk, (sg + 1) * kSegmentChunks - 1);
      for (int64_t c = c_first; c < std::min(c_first + kAhead, c_last + 1); ++c) {
        chunk_rows(c * kKeyChunk, ring_k[c % kRing], ring_v[c % kRing], false);
      }
      for (int64_t c = c_first; c <= c_last; ++c) {
        const int64_t k0 = c * kKeyChunk;
        // the rows kAhead chunks on, fetched into the cache while this chunk computes (decode
        // over a long batch waits on memory, not on arithmetic)
        if (c + kAhead <= c_last) {
          chunk_rows((c + kAhead) * kKeyChunk, ring_k[(c + kAhead) % kRing],
                     ring_v[(c + kAhead) % kRing], true);
        }
        if (std::is_same_v<CT, float> && tn == 1 && far > 0 && c + far <= c_last) {
          visible_rows((c + far) * kKeyChunk, [&](int64_t, int64_t at) {
            for (int64_t b = 0; b < row_bytes; b += 64) {
              vec::prefetch_l2(reinterpret_cast<const char*>(kp + at) + b);
              vec::prefetch_l2(reinterpret_cast<const char*>(vp + at) + b);
            }
          });
        }
        const RT* const* krow;
        const RT* const* vrow;
        if constexpr (kInt8) {
          for (int64_t j = 0; j < kKeyChunk; ++j) {
            const int8_t* kj = ring_k[c % kRing][j];
            if (kj == zeros) {  // a key no row of the tile sees: float32 zeros, as fp32's
              deq_k[j] = deq_v[j] = zeros_f;
              continue;
            }
            float* dk = deq + j * D;
            float* dv = deq + (kKeyChunk + j) * D;
            dequantize_row<HD>(kj, D, dk);
            dequantize_row<HD>(ring_v[c % kRing][j], D, dv);
            deq_k[j] = dk;
            deq_v[j] = dv;
          }
          krow = deq_k;
          vrow = deq_v;
        } else {
          krow = ring_k[c % kRing];
          vrow = ring_v[c % kRing];
        }
        // A chunk every row of the tile sees whole (in a prefill all but the causal diagonal's and
        // a sliding window's edge chunks): each step for the whole tile at once, the scores of
        // all its rows, then their softmax steps, then their P.V steps in pairs across queries,
        // so that consecutive rows' independent work overlaps (row by row, each step waited on
        // the one before) and no row of a group of 3 goes through P.V alone. Each row takes the
        // same operations as on the general path below: the same bits.
        if constexpr (HD > 0) {
          if (k0 + kKeyChunk <= first_pos + 1 &&
              (sliding_window <= 0 || k0 >= last_pos - sliding_window + 1) && !(cap > 0.f)) {
            const int64_t n = tn * group;
            for (int64_t ti = 0; ti < tn; ++ti) {
              scores16_group<HD>(group, qp + (start + t0 + ti) * q_stride + kvh * group * D, krow,
                                 sp + ti * group * kKeyChunk);
            }
            int64_t live = 0;
            for (int64_t row = 0; row < n; ++row) {
              float* s = sp + row * kKeyChunk;
              live_row[row] =
                  softmax_step(row, s, vec::load(s) * vscale, vec::load(s + 8) * vscale, corr[row]);
              live += live_row[row];
            }
            pv_step<HD>(acc, corr, sp, vrow, 0, kKeyChunk, n, live, live_row, tn > 1, D);
            continue;
          }
        }
        for (int64_t ti = 0; ti < tn; ++ti) {
          const int64_t pos = first_pos + ti;
          const int64_t row_lo = sliding_window > 0 ? pos - sliding_window + 1 : 0;
          if (k0 > pos || k0 + kKeyChunk <= row_lo) continue;  // nothing here for this row
          // the lanes this row sees, [vis0, vis1): its position alone decides them
          const int64_t vis0 = std::max<int64_t>(row_lo - k0, 0);
          const int64_t vis1 = std::min<int64_t>(kKeyChunk, pos + 1 - k0);
          const bool partial = vis0 > 0 || vis1 < kKeyChunk;
          // scores and softmax of each head's row; then the P.V step of the query's rows
          int64_t live = 0;  // rows with a visible finite score here (all but in odd cases)
          // the group's scores at once (one key row load for all heads)
          if constexpr (HD > 0) {
            scores16_group<HD>(group, qp + (start + t0 + ti) * q_stride + kvh * group * D, krow,
                               sp);
          }
          for (int64_t g = 0; g < group; ++g) {
            const int64_t row = ti * group + g;
            float* s = sp + g * kKeyChunk;
            vec::F8 s0, s1;
            if constexpr (HD > 0) {
              s0 = vec::load(s) * vscale;
              s1 = vec::load(s + 8) * vscale;
              if (partial || cap > 0.f) {
                vec::store(s, s0);
                vec::store(s + 8, s1);
                for (int64_t j = 0; j < kKeyChunk; ++j) {
                  if (j < vis0 || j >= vis1) {
                    s[j] = -kInf;
                  } else if (cap > 0.f) {
                    s[j] = cap * std::tanh(s[j] / cap);
                  }
                }
                s0 = vec::load(s);
                s1 = vec::load(s + 8);
              }
            } else {
              const float* qv = qp + (start + t0 + ti) * q_stride + (kvh * group + g) * D;
              for (int64_t j = 0; j < kKeyChunk; ++j) {
                if (j < vis0 || j >= vis1) {
                  s[j] = -kInf;
                  continue;
                }
                float score = fscale * dot(qv, krow[j], D);
                if (cap > 0.f) score = cap * std::tanh(score / cap);
                s[j] = score;
              }
              s0 = vec::load(s);
              s1 = vec::load(s + 8);
            }
            live_row[g] = softmax_step(row, s, s0, s1, corr[g]);
            live += live_row[g];
          }
          pv_step<HD>(acc + ti * group * D, corr, sp, vrow, vis0, vis1, group, live, live_row,
                      tn > 1, D);
        }
      }
      if (nseg > 1) {  // keep the segment's state (a split tile), or fold it into the merge
        for (int64_t ti = 0; ti < tn; ++ti) {
          for (int64_t g = 0; g < group; ++g) {
            const int64_t row = ti * group + g;
            if (seg >= 0) {
              float* rec = partial_record(item_partial[e], ti, nseg, sg, kvh * group + g);
              std::copy_n(acc + row * D, D, rec);
              rec[D] = m[row];
              rec[D + 1] = l[row];
            } else {
              fold_segment(macc + row * D, mm[row], ml[row], acc + row * D, m[row], l[row], D);
            }
          }
        }
      }
      }  // segments
      if (seg >= 0) continue;  // (merge_segments writes the rows)
      const float* out_acc = nseg > 1 ? macc : acc;
      const float* out_l = nseg > 1 ? ml : l;
      for (int64_t ti = 0; ti < tn; ++ti) {
        for (int64_t g = 0; g < group; ++g) {
          const int64_t row = ti * group + g;
          write_row(op + (start + t0 + ti) * out_stride + (kvh * group + g) * D,
                    out_acc + row * D, out_l[row], D);
        }
      }
    }
  };
  // one contiguous run of items per thread, of about equal work (items of one tile, one per KV
  // head, weigh the same)
  const int64_t* work = plan.work_before.data();
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  auto slot_begin = [&](int64_t slot) {
    const int64_t target = work[item_req.size()] * Hkv / slots * slot;
    int64_t lo = 0, hi = items;  // the first item with at least `target` work before it
    while (lo < hi) {
      const int64_t it = (lo + hi) / 2, tile = it / Hkv;
      const int64_t before = work[tile] * Hkv + it % Hkv * (work[tile + 1] - work[tile]);
      if (before < target) {
        lo = it + 1;
      } else {
        hi = it;
      }
    }
    return slot == slots ? items : lo;
  };
  at::parallel_for(0, slots, 1, [&](int64_t begin, int64_t end) {
    run_items(slot_begin(begin), slot_begin(end));
  });
  // merge_segments: each split tile's rows, their segments folded in order as an unsplit tile's
  const int64_t merges = static_cast<int64_t>(plan.merges.size());
  at::parallel_for(0, merges, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> merged(D);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t e = plan.merges[i], r = item_req[e], t0 = item_tile[e];
      const int64_t start = qslp[r], nq = qslp[r + 1] - start;
      const int64_t tn = std::min(kQueryTile, nq - t0);
      const int64_t nseg = segments_through(slp[r] - nq + t0 + tn - 1);
      for (int64_t ti = 0; ti < tn; ++ti) {
        for (int64_t h = 0; h < H; ++h) {
          float mx = -kInf, sum = 0.f;
          for (int64_t sg = 0; sg < nseg; ++sg) {
            const float* rec = partial_record(item_partial[e], ti, nseg, sg, h);
            fold_segment(merged.data(), mx, sum, rec, rec[D], rec[D + 1], D);
          }
          write_row(op + (start + t0 + ti) * out_stride + h * D, merged.data(), sum, D);
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
  } else if (cache.int8) {
    with_head_dim(TypeTag<int8_t>{});
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
  TORCH_CHECK(q.dim() == 3 && q.size(2) == cache.head_dim, "paged_attention: query head size ",
              q.size(2), " against the cache's ", cache.head_dim);
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
