// tree_attention and merge_attn_states: per-element logic shared by the CPU and CUDA kernels.
//
// Scores live in the log2 domain: queries are pre-multiplied by scale * log2(e), so a softmax
// weight is exp2(score - max). A partial attention over some keys is a SoftmaxState (running
// max m and denominator l, both log2-domain) plus an unnormalised output sum; merging two
// states, or finishing one into (out, natural-log LSE), goes through the functions below so
// that the CPU and CUDA kernels round identically.
#pragma once

#include <cmath>

#include "adaeagle/common.h"

namespace adaeagle {

// tree_attention modes (ATTN_FULL, ATTN_PREFIX_ONLY, ATTN_TREE_ONLY in adaeagle_ext/ref.py).
enum AttnMode : int32_t { kAttnFull = 0, kAttnPrefixOnly = 1, kAttnTreeOnly = 2 };

// Element type of q, the cache and out.
enum AttnDtype : int32_t { kAttnF32 = 0, kAttnBF16 = 1, kAttnF16 = 2 };

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

ADAEAGLE_HD float attn_exp2(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x);
#else
  return std::exp2(x);
#endif
}

ADAEAGLE_HD float attn_log2(float x) {
#if defined(__CUDA_ARCH__)
  return log2f(x);
#else
  return std::log2(x);
#endif
}

ADAEAGLE_HD float attn_neg_inf() {
  return -INFINITY;
}

// Key range [lo, hi) (cache rows of the request) that `mode` looks at.
ADAEAGLE_HD void attn_key_range(int mode, int prefix_len, int tree_size, int* lo, int* hi) {
  *lo = mode == kAttnTreeOnly ? prefix_len : 0;
  *hi = mode == kAttnPrefixOnly ? prefix_len : prefix_len + tree_size;
}

// Whether cache row `key` of a request with `prefix_len` cached rows is visible to a tree
// token with ancestor row `bits` (bit j: local node j), for a key inside attn_key_range.
// Prefix rows are always visible; tree row prefix_len + j is visible when bit j is set.
ADAEAGLE_HD bool attn_key_visible(int key, int prefix_len, uint64_t bits) {
  return key < prefix_len || ((bits >> (key - prefix_len)) & 1u) != 0;
}

// Running softmax state of one query row: m the largest log2-domain score seen (-inf when
// none), l the sum of exp2(score - m).
struct SoftmaxState {
  float m;
  float l;
};

ADAEAGLE_HD SoftmaxState softmax_state_empty() {
  return {attn_neg_inf(), 0.0f};
}

// Raises the running max to cover a new block whose largest score is `block_max`, rescales l,
// and returns the factor by which the caller must scale its output sum (0 for an empty state,
// exactly 1 when the max does not move). The caller then adds exp2(s - st->m) for the block's
// scores to l and to its output sum.
ADAEAGLE_HD float softmax_state_raise(SoftmaxState* st, float block_max) {
  const float m_new = st->m > block_max ? st->m : block_max;
  const float alpha = st->m == m_new ? 1.0f : attn_exp2(st->m - m_new);
  st->m = m_new;
  st->l *= alpha;
  return alpha;
}

// Factor turning the output sum into the attention output: 1/l, or 0 for a row with no key.
ADAEAGLE_HD float softmax_state_out_scale(SoftmaxState st) {
  return st.l > 0.0f ? 1.0f / st.l : 0.0f;
}

// Natural-log LSE of the row's scores (before the log2e pre-scaling), -inf for no key.
ADAEAGLE_HD float softmax_state_lse(SoftmaxState st) {
  return st.l > 0.0f ? (st.m + attn_log2(st.l)) * kLn2 : attn_neg_inf();
}

// Weights of two normalised partial outputs with natural-log LSEs over disjoint keys:
// out = wa * out_a + wb * out_b; returns the merged LSE. An empty side (-inf) gets weight 0
// and the other side weight exactly 1; both empty gives weights 0 and LSE -inf. Callers skip
// a side whose weight is 0 rather than multiply it, so its output may hold anything.
ADAEAGLE_HD float lse_merge_weights(float lse_a, float lse_b, float* wa, float* wb) {
  const float m = lse_a > lse_b ? lse_a : lse_b;
  if (!(m > attn_neg_inf())) {  // both empty (or NaN)
    *wa = 0.0f;
    *wb = 0.0f;
    return m == attn_neg_inf() ? m : NAN;
  }
  const float ea = lse_a == m ? 1.0f : attn_exp2((lse_a - m) * kLog2e);
  const float eb = lse_b == m ? 1.0f : attn_exp2((lse_b - m) * kLog2e);
  const float sum = ea + eb;
  *wa = ea / sum;
  *wb = eb / sum;
  return m + attn_log2(sum) * kLn2;
}

// Offset of element (layer, kv, b, row, head, 0) in a contiguous [L, 2, B, S_max, Hkv, D] cache.
ADAEAGLE_HD int64_t kv_cache_offset(int64_t layer, int64_t kv, int64_t b, int64_t row,
                                    int64_t head, int64_t batch, int64_t s_max, int64_t hkv,
                                    int64_t dim) {
  return ((((layer * 2 + kv) * batch + b) * s_max + row) * hkv + head) * dim;
}

#if defined(ADAEAGLE_WITH_CUDA) || defined(__CUDACC__)
}  // namespace adaeagle
#include <cuda_runtime_api.h>
namespace adaeagle {

// Launches tree_attention on `stream`. q/out [N, H, D] and the cache of `dtype`; lse may be
// null. A request whose tree exceeds 64 nodes or whose prefix_len + T exceeds s_max gets NaN
// outputs (the wrapper's validate=True reports it on the host).
cudaError_t launch_tree_attention(const void* q, const void* kv_cache, AttnDtype dtype,
                                  int64_t layer, int64_t cache_batch, int64_t s_max, int hkv,
                                  int heads, int dim, const int32_t* prefix_lens,
                                  const int32_t* tree_indptr, const int64_t* mask_bits,
                                  int batch, float scale, int mode, void* out, float* lse,
                                  cudaStream_t stream);

// Launches merge_attn_states on `stream`: out [tokens, heads, dim], lse [tokens, heads]. out
// may alias out_a or out_b, lse may alias lse_a or lse_b.
cudaError_t launch_merge_attn_states(const void* out_a, const float* lse_a, const void* out_b,
                                     const float* lse_b, AttnDtype dtype, int64_t tokens,
                                     int heads, int dim, void* out, float* lse,
                                     cudaStream_t stream);
#endif

}  // namespace adaeagle
