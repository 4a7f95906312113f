// ldlp_mlp on CUDA: one block per row. Each warp computes whole output neurons (a lane-strided
// dot product over a weight row streamed from global memory, then a warp reduction); the
// activations between layers live in shared memory.
#include "adaeagle/ldlp_mlp.h"

namespace adaeagle {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;

__device__ __forceinline__ float warp_sum(float v) {
  for (int s = kWarpSize / 2; s > 0; s /= 2) v += __shfl_xor_sync(0xffffffffu, v, s);
  return v;
}

template <typename TA, typename TW>
__global__ void __launch_bounds__(kThreads)
    ldlp_mlp_kernel(const TA* __restrict__ emb, const TA* __restrict__ hidden,
                    const TW* __restrict__ w_in, const TW* __restrict__ b_in,
                    const TW* __restrict__ w_blocks, const TW* __restrict__ b_blocks,
                    const TW* __restrict__ w_out, const TW* __restrict__ b_out, int hidden_size,
                    int width, int32_t k_max, float eps, int32_t* __restrict__ lengths,
                    float* __restrict__ raw, int32_t* __restrict__ max_len) {
  __shared__ float s_a[kLdlpMaxWidth];
  __shared__ float s_b[kLdlpMaxWidth];
  __shared__ float s_sum_sq[2][kWarps];
  const int row = blockIdx.x;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int H = hidden_size;
  const int W = width;
  const TA* e = emb + static_cast<int64_t>(row) * H;
  const TA* f = hidden + static_cast<int64_t>(row) * H;

  const float sq_e = warp_sum(ldlp_sum_sq_strided(e, H, threadIdx.x, kThreads));
  const float sq_f = warp_sum(ldlp_sum_sq_strided(f, H, threadIdx.x, kThreads));
  if (lane == 0) {
    s_sum_sq[0][warp] = sq_e;
    s_sum_sq[1][warp] = sq_f;
  }
  __syncthreads();
  float sum_e = 0.0f;
  float sum_f = 0.0f;
  for (int w = 0; w < kWarps; ++w) {
    sum_e += s_sum_sq[0][w];
    sum_f += s_sum_sq[1][w];
  }
  const float scale_e = ldlp_rms_scale(sum_e, H, eps);
  const float scale_f = ldlp_rms_scale(sum_f, H, eps);

  float* x = s_a;
  float* y = s_b;
  for (int o = warp; o < W; o += kWarps) {
    const TW* w = w_in + static_cast<int64_t>(o) * 2 * H;
    const float part = scale_e * ldlp_dot_strided(w, e, H, lane, kWarpSize) +
                       scale_f * ldlp_dot_strided(w + H, f, H, lane, kWarpSize);
    const float sum = warp_sum(part);
    if (lane == 0) x[o] = sum + ldlp_load(b_in[o]);
  }
  __syncthreads();

  for (int l = 0; l < kLdlpBlocks; ++l) {
    const TW* wl = w_blocks + static_cast<int64_t>(l) * W * W;
    const TW* bl = b_blocks + static_cast<int64_t>(l) * W;
    for (int o = warp; o < W; o += kWarps) {
      const float sum =
          warp_sum(ldlp_dot_strided(wl + static_cast<int64_t>(o) * W, x, W, lane, kWarpSize));
      if (lane == 0) y[o] = x[o] + ldlp_silu(sum + ldlp_load(bl[o]));
    }
    __syncthreads();
    float* t = x;
    x = y;
    y = t;
  }

  if (warp == 0) {
    const float sum = warp_sum(ldlp_dot_strided(w_out, x, W, lane, kWarpSize));
    if (lane == 0) {
      const float out = sum + ldlp_load(b_out[0]);
      const int32_t k = ldlp_clamp_round(out, k_max);
      lengths[row] = k;
      if (raw != nullptr) raw[row] = out;
      if (max_len != nullptr) atomicMax(max_len, k);
    }
  }
}

template <typename TA, typename TW>
cudaError_t launch_typed(const void* emb, const void* hidden, const void* w_in, const void* b_in,
                         const void* w_blocks, const void* b_blocks, const void* w_out,
                         const void* b_out, int batch, int hidden_size, int width, int32_t k_max,
                         float eps, int32_t* lengths, float* raw, int32_t* max_len,
                         cudaStream_t stream) {
  ldlp_mlp_kernel<TA, TW><<<batch, kThreads, 0, stream>>>(
      static_cast<const TA*>(emb), static_cast<const TA*>(hidden), static_cast<const TW*>(w_in),
      static_cast<const TW*>(b_in), static_cast<const TW*>(w_blocks),
      static_cast<const TW*>(b_blocks), static_cast<const TW*>(w_out),
      static_cast<const TW*>(b_out), hidden_size, width, k_max, eps, lengths, raw, max_len);
  return cudaGetLastError();
}

template <typename TA>
cudaError_t launch_act(LdlpDtype weight_dtype, const void* emb, const void* hidden,
                       const void* w_in, const void* b_in, const void* w_blocks,
                       const void* b_blocks, const void* w_out, const void* b_out, int batch,
                       int hidden_size, int width, int32_t k_max, float eps, int32_t* lengths,
                       float* raw, int32_t* max_len, cudaStream_t stream) {
  if (weight_dtype == kLdlpBFloat16) {
    return launch_typed<TA, LdlpBf16>(emb, hidden, w_in, b_in, w_blocks, b_blocks, w_out, b_out,
                                      batch, hidden_size, width, k_max, eps, lengths, raw,
                                      max_len, stream);
  }
  return launch_typed<TA, float>(emb, hidden, w_in, b_in, w_blocks, b_blocks, w_out, b_out,
                                 batch, hidden_size, width, k_max, eps, lengths, raw, max_len,
                                 stream);
}

}  // namespace

cudaError_t launch_ldlp_mlp(const void* emb, const void* hidden, LdlpDtype act_dtype,
                            const void* w_in, const void* b_in, const void* w_blocks,
                            const void* b_blocks, const void* w_out, const void* b_out,
                            LdlpDtype weight_dtype, int batch, int hidden_size, int width,
                            int32_t k_max, float eps, int32_t* lengths, float* raw,
                            int32_t* max_len, cudaStream_t stream) {
  if (max_len != nullptr) {
    const cudaError_t err = cudaMemsetAsync(max_len, 0, sizeof(int32_t), stream);
    if (err != cudaSuccess) return err;
  }
  if (batch == 0) return cudaSuccess;
  if (act_dtype == kLdlpBFloat16) {
    return launch_act<LdlpBf16>(weight_dtype, emb, hidden, w_in, b_in, w_blocks, b_blocks,
                                w_out, b_out, batch, hidden_size, width, k_max, eps, lengths,
                                raw, max_len, stream);
  }
  return launch_act<float>(weight_dtype, emb, hidden, w_in, b_in, w_blocks, b_blocks, w_out,
                           b_out, batch, hidden_size, width, k_max, eps, lengths, raw, max_len,
                           stream);
}

}  // namespace adaeagle
