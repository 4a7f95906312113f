// rope_store_kv: rotary embedding of q and k plus the K/V cache write, shared by the CPU loop
// and the CUDA kernel.
//
// Token i's qkv row is [H query heads | Hkv key heads | Hkv value heads] of D each. For one
// q or k head x [D] with the token's cos, sin [D] and half = D / 2, as PyTorch's
// `x * cos + rotate_half(x) * sin` in separate ops (rotate_half(x) = cat(-x[half:], x[:half])):
//   out_e = round(round(x_e * cos_e) + round(rot_e * sin_e))
// where every product and the sum run in fp32 and round() goes to the storage dtype (identity
// for fp32). The two products must each be rounded to fp32 before the sum: no FMA contraction
// (the CPU file disables it, the CUDA kernel uses __fmul_rn / __fadd_rn).
#pragma once

#include <cstdint>

#include "adaeagle/common.h"

namespace adaeagle {

enum RopeDtype : int32_t { kRopeFloat32 = 0, kRopeBFloat16 = 1, kRopeFloat16 = 2 };

struct RopeShape {
  int64_t num_tokens;    // N
  int64_t num_heads;     // H
  int64_t num_kv_heads;  // Hkv
  int64_t head_dim;      // D, even
  int64_t cache_layers;  // L
  int64_t cache_batch;   // B
  int64_t s_max;         // S_max
};

// Elements of one token's qkv row: (H + 2 Hkv) D.
ADAEAGLE_HD int64_t rope_qkv_width(const RopeShape& s) {
  return (s.num_heads + 2 * s.num_kv_heads) * s.head_dim;
}

// Offset of kv_cache[layer, kv, req, row, 0, 0] in a contiguous [L, 2, B, S_max, Hkv, D] cache.
ADAEAGLE_HD int64_t rope_cache_offset(const RopeShape& s, int64_t layer, int kv, int64_t req,
                                      int64_t row) {
  return (((layer * 2 + kv) * s.cache_batch + req) * s.s_max + row) * s.num_kv_heads *
         s.head_dim;
}

}  // namespace adaeagle

#if defined(ADAEAGLE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>

namespace adaeagle {

// qkv [N, (H + 2 Hkv) D], cos/sin [N, D], kv_cache [L, 2, B, S_max, Hkv, D], q_out [N, H, D],
// all of `dtype` and contiguous; req/rows int64 [N]. A token whose req or row is out of range
// writes no cache row (its q is still written). One thread per (token, head, element pair).
cudaError_t launch_rope_store_kv(const void* qkv, const void* cos, const void* sin,
                                 void* kv_cache, int64_t layer, const int64_t* req,
                                 const int64_t* rows, void* q_out, RopeDtype dtype,
                                 RopeShape shape, cudaStream_t stream);

}  // namespace adaeagle
#endif
