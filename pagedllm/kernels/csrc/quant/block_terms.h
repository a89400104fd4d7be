// The quantized kernel's block loop, the one part written per vector width: 512 bits where the
// build has AVX-512 (block_terms_512.h), else 256 (block_terms_256.h: AVX2, and the portable
// build with the same bits). Each defines, in pagedllm::quant:
//   kPairedBlocks<U4, G>   whether u4 blocks of 32 columns go in pairs (one 32-byte code load)
//   store_paired           where a block's int16 activations go in its pair (the unpack order)
//   kMaxTileSums           the largest tile (weight rows x activation rows) the registers hold
//   block_terms            a tile's block sums, added to its group terms (see tile_dots.h)
// The 512-bit loop sums a tile's block terms in its own 16-lane accumulators, so its results
// differ from the 256-bit ones in the last bits (each is batch-invariant in itself).
#pragma once

#include "../vec/vec.h"

#ifdef PAGEDLLM_VEC_512
#include "block_terms_512.h"
#else
#include "block_terms_256.h"
#endif
