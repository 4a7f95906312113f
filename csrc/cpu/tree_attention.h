// CPU entry points of tree_attention and merge_attn_states (raw pointers; shapes as in
// adaeagle_ext/ops.py).
#pragma once

#include <cstdint>

#include "adaeagle/tree_attention.h"

namespace adaeagle::cpu {

// Sizes of a tree_attention call: q/out [num_nodes, heads, dim], cache
// [layers, 2, cache_batch, s_max, hkv, dim], batch requests (batch <= cache_batch).
struct TreeAttentionShape {
  int64_t num_nodes, heads, dim;
  int64_t layers, cache_batch, s_max, hkv;
  int64_t batch;
};

// Checks the ragged batch (indptr monotonic from 0 to num_nodes, trees of at most 64 nodes,
// 0 <= prefix_len and prefix_len + T <= s_max) and raises a c10::Error naming the request,
// then runs the attention. dim must be 64 or 128; lse may be null.
void tree_attention(const void* q, const void* kv_cache, AttnDtype dtype,
                    const TreeAttentionShape& shape, int64_t layer, const int32_t* prefix_lens,
                    const int32_t* tree_indptr, const int64_t* mask_bits, float scale,
                    int mode, void* out, float* lse);

// out = merge of two normalised partial attentions by their natural-log LSE, rows [rows, dim]
// (rows = N * H). out may alias out_a or out_b and lse may alias lse_a or lse_b.
void merge_attn_states(const void* out_a, const float* lse_a, const void* out_b,
                       const float* lse_b, AttnDtype dtype, int64_t rows, int64_t dim, void* out,
                       float* lse);

}  // namespace adaeagle::cpu
