// Wall time of each section of the fused decoder stack (decoder_layer.cpp), off by default:
// benchmarks/profile_offline_steps.py turns it on to split a step's forward into its linears
// by kind, attention and the elementwise work between them. Sections are timed on the calling
// thread around whole (internally parallel) calls, so the sums are wall time. Off, each
// section costs one relaxed atomic load.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace pagedllm {

enum class StackSection : int {
  kNorm = 0,   // the input and post-attention RMSNorms (with their residual adds)
  kQkv,        // qkv_proj (its bias and LoRA)
  kRotaryKv,   // per-head q/k norms, rotary, the KV-cache write
  kAttention,  // paged attention
  kO,          // o_proj
  kGateUp,     // gate_up_proj
  kAct,        // SiLU/GELU-and-mul
  kDown,       // down_proj
  kCount,
};

struct SectionTimes {
  std::atomic<bool> enabled{false};
  int64_t nanos[static_cast<int>(StackSection::kCount)] = {};
};

inline SectionTimes& section_times() {
  static SectionTimes times;
  return times;
}

// Adds its lifetime to `section` while timing is on.
class SectionScope {
 public:
  explicit SectionScope(StackSection section) : section_(section) {
    on_ = section_times().enabled.load(std::memory_order_relaxed);
    if (on_) start_ = std::chrono::steady_clock::now();
  }
  ~SectionScope() {
    if (!on_) return;
    const auto elapsed = std::chrono::steady_clock::now() - start_;
    section_times().nanos[static_cast<int>(section_)] +=
        std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count();
  }
  SectionScope(const SectionScope&) = delete;
  SectionScope& operator=(const SectionScope&) = delete;

 private:
  StackSection section_;
  bool on_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace pagedllm
