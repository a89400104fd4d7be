// Constants and scalar helpers of the quantized linear kernel (see quant_linear.cpp).
#pragma once

#include <c10/util/Half.h>

#include <cstdint>

#include "../vec/vec.h"

namespace pagedllm::quant {
// (internal linkage, as one translation unit includes these: the compiler inlines each tile
// shape into its one caller)
namespace {

namespace vec = pagedllm::vec;

constexpr int64_t kBlock = 32;  // activation quantization block (columns)
// The GEMV prefetches the codes of the weight row this many rows ahead, at the offset it reads
// now. Rows are short (288 bytes for K = 576 in 4 bits) and a tile reads 1-4 of them at once,
// so the hardware prefetcher loses the stream at each row change; one quad ahead and more
// measured alike, 1.25x faster than prefetching within the row (30 layers + LM head of
// SmolLM2 at M = 1, data from DRAM).
constexpr int64_t kPrefetchRows = 8;

// A group's scale or minimum: float32, or float16 where that holds the value exactly (GGUF's
// own scales are fp16: 20 instead of 24 bytes per 32 4-bit weights, the bytes decode reads).
inline float to_float(float v) { return v; }
inline float to_float(c10::Half v) { return vec::half_to_float(v); }

}  // namespace
}  // namespace pagedllm::quant
