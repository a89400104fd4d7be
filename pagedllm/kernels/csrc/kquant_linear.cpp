// GGUF K-quant linear layers and embedding rows with the file's compact scales (quant/kquant.h):
// torch.ops.pagedllm.kquant_linear / kquant_gather_rows, and pagedllm::kquant_linear for the
// fused decoder layer. Same results, bit for bit, as quant_linear on the PackedGroupWeight the
// same blocks decode to (see quant/kquant.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "ops.h"
#include "quant/kquant.h"
#include "quant/op_checks.h"

namespace {

using pagedllm::quant::check_activation_bits;
using pagedllm::quant::float_rows;
using pagedllm::quant::out_rows;
using pagedllm::quant::gather_rows;
using pagedllm::quant::KQuantScales;
using pagedllm::quant::kquant_row;
using pagedllm::quant::kquant_rows;
using pagedllm::quant::kRowGroup;
using pagedllm::quant::kSuperBlock;

// The scales of a weight of in_features K, checked against its codes; N its out_features.
KQuantScales check_scales(const at::Tensor& codes, const at::Tensor& sub_scales,
                          const at::Tensor& sub_mins, const at::Tensor& super_scales,
                          const at::Tensor& super_mins, int64_t group_size, bool u4,
                          int64_t offset, int64_t K) {
  TORCH_CHECK(group_size == 16 || group_size == 32, "group size must be 16 or 32");
  TORCH_CHECK(K % kSuperBlock == 0, "in_features must be a multiple of 256, got ", K);
  TORCH_CHECK(u4 ? offset == 0 : offset >= 0 && offset < 64, "code offset out of range");
  const int64_t groups = codes.size(0), ng = K / group_size, nsb = K / kSuperBlock;
  const int64_t rg_bytes = u4 ? ng * kRowGroup * group_size / 2 : ng * kRowGroup * group_size;
  TORCH_CHECK(codes.dim() == 2 && codes.size(1) == (u4 ? rg_bytes : rg_bytes / 4 * 3),
              "K-quant codes do not match in_features");
  TORCH_CHECK(codes.scalar_type() == at::kByte && sub_scales.scalar_type() == at::kChar &&
              super_scales.scalar_type() == at::kHalf && super_mins.scalar_type() == at::kHalf,
              "K-quant tensors: uint8 codes, int8 sub-scales, float16 super-scales");
  TORCH_CHECK(sub_scales.sizes() == at::IntArrayRef({groups, ng, kRowGroup}),
              "K-quant sub-scales of the wrong shape");
  TORCH_CHECK(sub_mins.numel() == 0 || (sub_mins.sizes() == sub_scales.sizes() &&
                                        sub_mins.scalar_type() == at::kChar),
              "K-quant sub-mins of the wrong shape");
  TORCH_CHECK(super_scales.sizes() == at::IntArrayRef({groups, nsb, kRowGroup}) &&
              super_mins.sizes() == super_scales.sizes(), "K-quant super-scales of the wrong shape");
  for (const at::Tensor* t : {&codes, &sub_scales, &sub_mins, &super_scales, &super_mins})
    TORCH_CHECK(t->is_contiguous(), "K-quant tensors must be contiguous");
  const int8_t* sc = sub_scales.data_ptr<int8_t>();
  return KQuantScales{sc, sub_mins.numel() ? sub_mins.data_ptr<int8_t>() : sc,
                      super_scales.data_ptr<c10::Half>(), super_mins.data_ptr<c10::Half>(),
                      ng, nsb, offset};
}

template <bool U4, int G>
void run(const at::Tensor& x, const uint8_t* codes, const KQuantScales& k, bool int8,
         at::Tensor& out) {
  if (int8) {
    kquant_rows<U4, G, true>(x, codes, k, out);
  } else {
    kquant_rows<U4, G, false>(x, codes, k, out);
  }
}

}  // namespace

namespace pagedllm {

namespace {

at::Tensor kquant_linear_rows(const at::Tensor& x_in, const at::Tensor& codes,
                              const at::Tensor& sub_scales, const at::Tensor& sub_mins,
                              const at::Tensor& super_scales, const at::Tensor& super_mins,
                              int64_t group_size, bool u4, int64_t offset,
                              int64_t activation_bits, const at::Tensor& into) {
  check_activation_bits(activation_bits);
  const at::Tensor x = float_rows(x_in);
  const int64_t M = x.size(0), K = x.size(1);
  const KQuantScales k = check_scales(codes, sub_scales, sub_mins, super_scales, super_mins,
                                      group_size, u4, offset, K);
  at::Tensor out = out_rows(into, M, codes.size(0) * kRowGroup, x);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const bool int8 = activation_bits == 8;
  if (M > 0) {
    if (u4) {
      group_size == 32 ? run<true, 32>(x, cp, k, int8, out) : run<true, 16>(x, cp, k, int8, out);
    } else {
      group_size == 32 ? run<false, 32>(x, cp, k, int8, out)
                       : run<false, 16>(x, cp, k, int8, out);
    }
  }
  return out;
}

}  // namespace

at::Tensor kquant_linear(const at::Tensor& x, const at::Tensor& codes,
                         const at::Tensor& sub_scales, const at::Tensor& sub_mins,
                         const at::Tensor& super_scales, const at::Tensor& super_mins,
                         int64_t group_size, bool u4, int64_t offset, int64_t activation_bits) {
  return kquant_linear_rows(x, codes, sub_scales, sub_mins, super_scales, super_mins, group_size,
                            u4, offset, activation_bits, at::Tensor())
      .to(x.scalar_type());
}

void kquant_linear_into(const at::Tensor& x, const at::Tensor& codes,
                        const at::Tensor& sub_scales, const at::Tensor& sub_mins,
                        const at::Tensor& super_scales, const at::Tensor& super_mins,
                        int64_t group_size, bool u4, int64_t offset, int64_t activation_bits,
                        const at::Tensor& out) {
  TORCH_CHECK(out.defined(), "kquant_linear_into: no out rows");
  kquant_linear_rows(x, codes, sub_scales, sub_mins, super_scales, super_mins, group_size, u4,
                     offset, activation_bits, out);
}

at::Tensor kquant_gather_rows(const at::Tensor& ids, const at::Tensor& codes,
                              const at::Tensor& sub_scales, const at::Tensor& sub_mins,
                              const at::Tensor& super_scales, const at::Tensor& super_mins,
                              int64_t group_size, bool u4, int64_t offset, int64_t in_features) {
  const int64_t K = in_features;
  const KQuantScales k = check_scales(codes, sub_scales, sub_mins, super_scales, super_mins,
                                      group_size, u4, offset, K);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  return gather_rows(ids, codes.size(0) * kRowGroup, K, [&](int64_t n, float* dst) {
    if (u4) {
      group_size == 32 ? kquant_row<true, 32>(cp, k, K, n, dst)
                       : kquant_row<true, 16>(cp, k, K, n, dst);
    } else {
      group_size == 32 ? kquant_row<false, 32>(cp, k, K, n, dst)
                       : kquant_row<false, 16>(cp, k, K, n, dst);
    }
  });
}

}  // namespace pagedllm

TORCH_LIBRARY_FRAGMENT(pagedllm, m) {
  m.def("kquant_linear(Tensor x, Tensor codes, Tensor sub_scales, Tensor sub_mins, "
        "Tensor super_scales, Tensor super_mins, int group_size, bool u4, int offset, "
        "int activation_bits=16) -> Tensor");
  m.def("kquant_gather_rows(Tensor ids, Tensor codes, Tensor sub_scales, Tensor sub_mins, "
        "Tensor super_scales, Tensor super_mins, int group_size, bool u4, int offset, "
        "int in_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("kquant_linear", &pagedllm::kquant_linear);
  m.impl("kquant_gather_rows", &pagedllm::kquant_gather_rows);
}
