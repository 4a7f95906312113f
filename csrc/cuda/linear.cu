// linear on CUDA: one warp per output element, dequantising in the loop with the same
// per-element logic as the portable CPU kernel (adaeagle/gguf_blocks.h). Lane l accumulates
// k = l, l + 32, ... in fp32, then a fixed butterfly sums the lanes: an element's order never
// depends on M, so the kernel is batch-invariant too.
#include <cuda_bf16.h>

#include "adaeagle/gguf_blocks.h"

namespace adaeagle {
namespace {

constexpr int kWarpsPerBlock = 4;

__global__ void linear_kernel(const void* __restrict__ x, bool x_bf16,
                              const uint8_t* __restrict__ weight, int type, int64_t row_bytes,
                              const float* __restrict__ bias, void* __restrict__ y, bool y_bf16,
                              int64_t m_rows, int64_t n_cols, int64_t k_len) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= m_rows * n_cols) return;
  // Warps next to each other share a weight row (consecutive m), so it is read once from DRAM.
  const int64_t n = warp / m_rows;
  const int64_t m = warp % m_rows;
  const uint8_t* row = weight + n * row_bytes;
  float acc = 0.0f;
  for (int64_t k = lane; k < k_len; k += 32) {
    const int64_t at = m * k_len + k;
    const float xv = x_bf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(x)[at])
                            : static_cast<const float*>(x)[at];
    acc = fmaf(gguf_weight(type, row, k), xv, acc);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  }
  if (lane != 0) return;
  if (bias != nullptr) acc += bias[n];
  const int64_t out = m * n_cols + n;
  if (y_bf16) {
    static_cast<__nv_bfloat16*>(y)[out] = __float2bfloat16_rn(acc);
  } else {
    static_cast<float*>(y)[out] = acc;
  }
}

}  // namespace

cudaError_t launch_linear(const void* x, bool x_bf16, const uint8_t* weight, int type,
                          int64_t row_bytes, const float* bias, void* y, bool y_bf16, int64_t m,
                          int64_t n, int64_t k, cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const int64_t blocks = (m * n + kWarpsPerBlock - 1) / kWarpsPerBlock;
  linear_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      x, x_bf16, weight, type, row_bytes, bias, y, y_bf16, m, n, k);
  return cudaGetLastError();
}

}  // namespace adaeagle
