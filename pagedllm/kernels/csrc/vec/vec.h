// The vector types every kernel body is written against, one header per instruction set,
// chosen here by the compile flags (kernels/__init__.py's _compile_flags):
//   vec_avx512.h  AVX-512 F/BW/VL (+ VNNI): vec_avx2.h's 256-bit types and 512-bit ones for the
//                 quantized kernel's block loop (PAGEDLLM_VEC_512, see quant/block_terms.h)
//   vec_avx2.h    AVX2 + FMA + F16C: F8 (8 floats) and I8x32 (256 bits of integers)
//   vec_scalar.h  portable C++ with vec_avx2.h's results, bit for bit
//   rows16.h      the R16 types (16 weight rows' lanes, quant/interleaved.h) of the builds
//                 without 512-bit registers, as two 8-lane halves; vec_avx512.h has its own
// A kernel's reduction order is its code's, so it is the same in every build; where a build
// sums differently (the 512-bit block loop) the kernel says so.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include "vec_avx512.h"
#define PAGEDLLM_VEC_512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "vec_avx2.h"
#include "rows16.h"
#else
#include "vec_scalar.h"
#include "rows16.h"
#endif

namespace pagedllm::vec {

// e^x for 8 floats (Cephes' expf: range reduction by ln 2, degree-6 polynomial; ~1 ulp).
// Scalar std::exp per key was the largest cost of decode attention.
inline F8 exp(F8 x) {
  x = min(max(x, set1(-87.3f)), set1(88.3f));
  const F8 n = floor(fma(x, set1(1.44269504088896341f), set1(0.5f)));
  x = fnma(n, set1(0.693359375f), x);
  x = fnma(n, set1(-2.12194440e-4f), x);
  F8 y = set1(1.9875691500e-4f);
  y = fma(y, x, set1(1.3981999507e-3f));
  y = fma(y, x, set1(8.3334519073e-3f));
  y = fma(y, x, set1(4.1665795894e-2f));
  y = fma(y, x, set1(1.6666665459e-1f));
  y = fma(y, x, set1(5.0000001201e-1f));
  y = fma(y, x * x, x + set1(1.f));
  return y * pow2(n);
}

}  // namespace pagedllm::vec
