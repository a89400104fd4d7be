// Time of each section of the fused decoder stack (decoder_layer.cpp), off by default:
// benchmarks/profile_offline_steps.py turns it on to split a step's forward into its linears
// by kind, attention and the elementwise work between them. Sections are timed on the calling
// thread around whole (internally parallel) calls: wall time (kWall), or the calling thread's
// CPU time (kThreadCpu: all of the work at one thread, and unlike wall time not inflated by
// other processes on a shared machine; a system call per reading). Off, each section costs one
// relaxed atomic load.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>

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

enum class SectionClock : int { kOff = 0, kWall = 1, kThreadCpu = 2 };

struct SectionTimes {
  std::atomic<int> clock{0};  // a SectionClock
  int64_t nanos[static_cast<int>(StackSection::kCount)] = {};
};

inline SectionTimes& section_times() {
  static SectionTimes times;
  return times;
}

inline int64_t section_clock_nanos(int clock) {
  if (clock == static_cast<int>(SectionClock::kThreadCpu)) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  }
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Times consecutive sections of one function: each next() ends the running section and starts
// another; the last ends with the scope. (Laps, so the timed code keeps its shape: no braces.)
class SectionLaps {
 public:
  explicit SectionLaps(StackSection first) : section_(first) {
    clock_ = section_times().clock.load(std::memory_order_relaxed);
    if (clock_) start_ = section_clock_nanos(clock_);
  }
  void next(StackSection section) {
    if (clock_) {
      const int64_t now = section_clock_nanos(clock_);
      section_times().nanos[static_cast<int>(section_)] += now - start_;
      start_ = now;
    }
    section_ = section;
  }
  ~SectionLaps() {
    if (clock_) section_times().nanos[static_cast<int>(section_)] +=
        section_clock_nanos(clock_) - start_;
  }
  SectionLaps(const SectionLaps&) = delete;
  SectionLaps& operator=(const SectionLaps&) = delete;

 private:
  StackSection section_;
  int clock_ = 0;
  int64_t start_ = 0;
};

}  // namespace pagedllm
