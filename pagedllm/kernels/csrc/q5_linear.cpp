// GGUF Q5_0 / Q5_1 linear layers and embedding rows with the file's fp16 scales and 5-bit codes
// (quant/q5.h): torch.ops.pagedllm.q5_linear / q5_gather_rows, and pagedllm::q5_linear for the
// fused decoder layer. Same results, bit for bit, as quant_linear on the PackedGroupWeight the
// same blocks decode to (see quant/q5.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "ops.h"
#include "quant/op_checks.h"
#include "quant/q5.h"

namespace {

using pagedllm::quant::check_activation_bits;
using pagedllm::quant::float_rows;
using pagedllm::quant::out_rows;
using pagedllm::quant::gather_rows;
using pagedllm::quant::kQ5Group;
using pagedllm::quant::kQ5PackedGroupBytes;
using pagedllm::quant::kquant_row;
using pagedllm::quant::kquant_rows;
using pagedllm::quant::kRowGroup;
using pagedllm::quant::Q5Scales;
using pagedllm::quant::Q5Terms;

// The scales of a weight of in_features K, checked against its codes.
Q5Scales check_q5(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& mins,
                  int64_t offset, int64_t K) {
  TORCH_CHECK(K % kQ5Group == 0, "in_features must be a multiple of 32, got ", K);
  TORCH_CHECK(offset >= 0 && offset < 32, "code offset out of range");
  const int64_t groups = codes.size(0), ng = K / kQ5Group;
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte &&
              codes.size(1) == ng * kQ5PackedGroupBytes, "Q5 codes do not match in_features");
  TORCH_CHECK(scales.scalar_type() == at::kHalf &&
              scales.sizes() == at::IntArrayRef({groups, ng, kRowGroup}),
              "Q5 scales: float16 [N / 16, K / 32, 16]");
  TORCH_CHECK(mins.numel() == 0 || (mins.scalar_type() == at::kHalf &&
                                    mins.sizes() == scales.sizes()),
              "Q5 mins: empty (Q5_0) or as the scales");
  for (const at::Tensor* t : {&codes, &scales, &mins})
    TORCH_CHECK(t->is_contiguous(), "Q5 tensors must be contiguous");
  return Q5Scales{scales.data_ptr<c10::Half>(),
                  mins.numel() ? mins.data_ptr<c10::Half>() : nullptr, ng, offset};
}

}  // namespace

namespace pagedllm {

namespace {

at::Tensor q5_linear_rows(const at::Tensor& x_in, const at::Tensor& codes,
                          const at::Tensor& scales, const at::Tensor& mins, int64_t offset,
                          int64_t activation_bits, const at::Tensor& into) {
  check_activation_bits(activation_bits);
  const at::Tensor x = float_rows(x_in);
  const int64_t M = x.size(0), K = x.size(1);
  const Q5Scales k = check_q5(codes, scales, mins, offset, K);
  at::Tensor out = out_rows(into, M, codes.size(0) * kRowGroup, x);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  using Src = Q5Terms<false, kQ5Group>;
  if (M > 0) {
    if (activation_bits == 8) {
      kquant_rows<false, kQ5Group, true, Src>(x, cp, k, out);
    } else {
      kquant_rows<false, kQ5Group, false, Src>(x, cp, k, out);
    }
  }
  return out;
}

}  // namespace

at::Tensor q5_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                     const at::Tensor& mins, int64_t offset, int64_t activation_bits) {
  return q5_linear_rows(x, codes, scales, mins, offset, activation_bits, at::Tensor())
      .to(x.scalar_type());
}

void q5_linear_into(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                    const at::Tensor& mins, int64_t offset, int64_t activation_bits,
                    const at::Tensor& out) {
  TORCH_CHECK(out.defined(), "q5_linear_into: no out rows");
  q5_linear_rows(x, codes, scales, mins, offset, activation_bits, out);
}

at::Tensor q5_gather_rows(const at::Tensor& ids, const at::Tensor& codes,
                          const at::Tensor& scales, const at::Tensor& mins, int64_t offset,
                          int64_t in_features) {
  const int64_t K = in_features;
  const Q5Scales k = check_q5(codes, scales, mins, offset, K);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  return gather_rows(ids, codes.size(0) * kRowGroup, K, [&](int64_t n, float* dst) {
    kquant_row<false, kQ5Group, Q5Terms<false, kQ5Group>>(cp, k, K, n, dst);
  });
}

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("q5_linear(Tensor x, Tensor codes, Tensor scales, Tensor mins, int offset, "
        "int activation_bits=16) -> Tensor");
  m.def("q5_gather_rows(Tensor ids, Tensor codes, Tensor scales, Tensor mins, int offset, "
        "int in_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("q5_linear", &pagedllm::q5_linear);
  m.impl("q5_gather_rows", &pagedllm::q5_gather_rows);
}
