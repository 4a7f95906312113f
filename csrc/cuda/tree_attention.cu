// tree_attention and merge_attn_states on CUDA: simple and obviously correct, not tuned.
//
// tree_attention: one block per (head, request); warp w handles tree tokens w, w + kWarps, ...
// and walks the visible keys one at a time with an online softmax in fp32; lane l holds dims
// l, l + 32, ... of the query and of the output sum.
//
// Visible keys are taken one at a time in increasing row order, which for a tree is
// root-to-node order: a tree row does the same arithmetic as its path run as a chain.
#include "adaeagle/cuda_convert.cuh"
#include "adaeagle/tree_attention.h"

namespace adaeagle {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = 4;
constexpr int kMergeThreads = 256;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename T, int D>
__global__ void tree_attention_kernel(const T* __restrict__ q, const T* __restrict__ kv,
                                      int64_t layer, int64_t cache_batch, int64_t s_max, int hkv,
                                      int heads, const int32_t* __restrict__ prefix_lens,
                                      const int32_t* __restrict__ indptr,
                                      const int64_t* __restrict__ mask_bits, float qscale,
                                      int mode, T* __restrict__ out, float* __restrict__ lse) {
  constexpr int kPerLane = D / kWarpSize;
  const int h = blockIdx.x;
  const int b = blockIdx.y;
  const int g = h / (heads / hkv);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int start = indptr[b];
  const int tree = indptr[b + 1] - start;
  const int prefix = prefix_lens[b];
  const bool bad = tree > kMaxTreeNodes || prefix < 0 || prefix + tree > s_max;
  int lo = 0, hi = 0;
  attn_key_range(mode, prefix, tree, &lo, &hi);
  const int64_t stride = static_cast<int64_t>(hkv) * D;
  const T* kbase = kv + kv_cache_offset(layer, 0, b, 0, g, cache_batch, s_max, hkv, D);
  const T* vbase = kv + kv_cache_offset(layer, 1, b, 0, g, cache_batch, s_max, hkv, D);

  for (int t = warp; t < tree; t += kWarps) {
    const int64_t idx = static_cast<int64_t>(start + t) * heads + h;
    T* dst = out + idx * D;
    if (bad) {  // reported on the host by the wrapper's validate=True
      for (int i = 0; i < kPerLane; ++i) dst[lane + i * kWarpSize] = from_float<T>(NAN);
      if (lse != nullptr && lane == 0) lse[idx] = NAN;
      continue;
    }
    float qv[kPerLane];
    float acc[kPerLane];
    for (int i = 0; i < kPerLane; ++i) {
      qv[i] = to_float(q[idx * D + lane + i * kWarpSize]) * qscale;
      acc[i] = 0.0f;
    }
    const uint64_t bits = i64_to_bits(mask_bits[start + t]);
    SoftmaxState st = softmax_state_empty();
    for (int key = lo; key < hi; ++key) {
      if (!attn_key_visible(key, prefix, bits)) continue;  // same decision in every lane
      const T* krow = kbase + key * stride;
      float dot = 0.0f;
      for (int i = 0; i < kPerLane; ++i) dot += qv[i] * to_float(krow[lane + i * kWarpSize]);
      const float s = warp_sum(dot);
      const float alpha = softmax_state_raise(&st, s);
      const float p = attn_exp2(s - st.m);
      st.l += p;
      const T* vrow = vbase + key * stride;
      for (int i = 0; i < kPerLane; ++i) {
        acc[i] = acc[i] * alpha + p * to_float(vrow[lane + i * kWarpSize]);
      }
    }
    const float f = softmax_state_out_scale(st);
    for (int i = 0; i < kPerLane; ++i) dst[lane + i * kWarpSize] = from_float<T>(acc[i] * f);
    if (lse != nullptr && lane == 0) lse[idx] = softmax_state_lse(st);
  }
}

// One block per token n: every lse_a / lse_b read of the block happens before the barrier and
// lse is written after it, so lse may alias lse_a or lse_b; out element i is read and written
// by one thread, so out may alias out_a or out_b.
template <typename T>
__global__ void merge_attn_states_kernel(const T* out_a, const float* lse_a, const T* out_b,
                                         const float* lse_b, int heads, int dim, T* out,
                                         float* lse) {
  const int64_t n = blockIdx.x;
  const int width = heads * dim;
  for (int e = threadIdx.x; e < width; e += blockDim.x) {
    const int64_t row = n * heads + e / dim;
    float wa = 0.0f, wb = 0.0f;
    lse_merge_weights(lse_a[row], lse_b[row], &wa, &wb);
    const int64_t i = n * width + e;
    float x = 0.0f;
    if (wa != 0.0f) x = wa * to_float(out_a[i]);
    if (wb != 0.0f) x = wa != 0.0f ? x + wb * to_float(out_b[i]) : wb * to_float(out_b[i]);
    out[i] = from_float<T>(x);
  }
  __syncthreads();
  for (int h = threadIdx.x; h < heads; h += blockDim.x) {
    const int64_t row = n * heads + h;
    float wa = 0.0f, wb = 0.0f;
    const float merged = lse_merge_weights(lse_a[row], lse_b[row], &wa, &wb);
    lse[row] = merged;
  }
}

template <typename T>
cudaError_t launch_tree_attention_typed(const void* q, const void* kv, int64_t layer,
                                        int64_t cache_batch, int64_t s_max, int hkv, int heads,
                                        int dim, const int32_t* prefix_lens,
                                        const int32_t* indptr, const int64_t* mask_bits,
                                        int batch, float qscale, int mode, void* out, float* lse,
                                        cudaStream_t stream) {
  const dim3 grid(heads, batch);
  const dim3 block(kWarps * kWarpSize);
  auto qt = static_cast<const T*>(q);
  auto kvt = static_cast<const T*>(kv);
  auto outt = static_cast<T*>(out);
  if (dim == 64) {
    tree_attention_kernel<T, 64><<<grid, block, 0, stream>>>(
        qt, kvt, layer, cache_batch, s_max, hkv, heads, prefix_lens, indptr, mask_bits, qscale,
        mode, outt, lse);
  } else if (dim == 128) {
    tree_attention_kernel<T, 128><<<grid, block, 0, stream>>>(
        qt, kvt, layer, cache_batch, s_max, hkv, heads, prefix_lens, indptr, mask_bits, qscale,
        mode, outt, lse);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_merge_typed(const void* out_a, const float* lse_a, const void* out_b,
                               const float* lse_b, int64_t tokens, int heads, int dim, void* out,
                               float* lse, cudaStream_t stream) {
  merge_attn_states_kernel<T><<<static_cast<unsigned>(tokens), kMergeThreads, 0, stream>>>(
      static_cast<const T*>(out_a), lse_a, static_cast<const T*>(out_b), lse_b, heads, dim,
      static_cast<T*>(out), lse);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_tree_attention(const void* q, const void* kv_cache, AttnDtype dtype,
                                  int64_t layer, int64_t cache_batch, int64_t s_max, int hkv,
                                  int heads, int dim, const int32_t* prefix_lens,
                                  const int32_t* tree_indptr, const int64_t* mask_bits,
                                  int batch, float scale, int mode, void* out, float* lse,
                                  cudaStream_t stream) {
  if (batch == 0 || heads == 0) return cudaSuccess;
  const float qscale = scale * kLog2e;
  switch (dtype) {
    case kAttnF32:
      return launch_tree_attention_typed<float>(q, kv_cache, layer, cache_batch, s_max, hkv,
                                                heads, dim, prefix_lens, tree_indptr, mask_bits,
                                                batch, qscale, mode, out, lse, stream);
    case kAttnBF16:
      return launch_tree_attention_typed<__nv_bfloat16>(
          q, kv_cache, layer, cache_batch, s_max, hkv, heads, dim, prefix_lens, tree_indptr,
          mask_bits, batch, qscale, mode, out, lse, stream);
    case kAttnF16:
      return launch_tree_attention_typed<__half>(q, kv_cache, layer, cache_batch, s_max, hkv,
                                                 heads, dim, prefix_lens, tree_indptr,
                                                 mask_bits, batch, qscale, mode, out, lse,
                                                 stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_merge_attn_states(const void* out_a, const float* lse_a, const void* out_b,
                                     const float* lse_b, AttnDtype dtype, int64_t tokens,
                                     int heads, int dim, void* out, float* lse,
                                     cudaStream_t stream) {
  if (tokens == 0 || heads == 0) return cudaSuccess;
  switch (dtype) {
    case kAttnF32:
      return launch_merge_typed<float>(out_a, lse_a, out_b, lse_b, tokens, heads, dim, out, lse,
                                       stream);
    case kAttnBF16:
      return launch_merge_typed<__nv_bfloat16>(out_a, lse_a, out_b, lse_b, tokens, heads, dim,
                                               out, lse, stream);
    case kAttnF16:
      return launch_merge_typed<__half>(out_a, lse_a, out_b, lse_b, tokens, heads, dim, out, lse,
                                        stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace adaeagle
