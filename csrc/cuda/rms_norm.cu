// rms_norm on CUDA: one block per row. Each thread sums the squares of a strided slice of the
// row, warps reduce by shuffles and warp sums are added in warp order: a fixed order per row.
#include "adaeagle/cuda_convert.cuh"
#include "adaeagle/rms_norm.h"

namespace adaeagle {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const T* x, const T* __restrict__ weight, T* out, int64_t h,
                    float eps) {
  __shared__ float warp_sums[kWarps];
  const T* xr = x + static_cast<int64_t>(blockIdx.x) * h;
  T* yr = out + static_cast<int64_t>(blockIdx.x) * h;
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < h; j += kThreads) {
    const float v = to_float(xr[j]);
    sum += v * v;
  }
  for (int s = kWarpSize / 2; s > 0; s /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, s);
  if (threadIdx.x % kWarpSize == 0) warp_sums[threadIdx.x / kWarpSize] = sum;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  const float r = rms_inverse(total, h, eps);
  for (int64_t j = threadIdx.x; j < h; j += kThreads) {
    const float normed = to_float(from_float<T>(to_float(xr[j]) * r));
    yr[j] = from_float<T>(to_float(weight[j]) * normed);
  }
}

template <typename T>
cudaError_t launch(const void* x, const void* weight, void* out, int64_t n, int64_t h,
                   float eps, cudaStream_t stream) {
  rms_norm_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<T*>(out), h, eps);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rms_norm(const void* x, const void* weight, void* out, RmsDtype dtype,
                            int64_t n, int64_t h, float eps, cudaStream_t stream) {
  if (n == 0 || h == 0) return cudaSuccess;
  switch (dtype) {
    case kRmsBFloat16: return launch<__nv_bfloat16>(x, weight, out, n, h, eps, stream);
    case kRmsFloat16: return launch<__half>(x, weight, out, n, h, eps, stream);
    default: return launch<float>(x, weight, out, n, h, eps, stream);
  }
}

}  // namespace adaeagle
