// rms_norm: per-row logic shared by the CPU loop and the CUDA kernel.
//
// For one row x [H] with weight w [H], in the order the Python model used (HF's LlamaRMSNorm):
//   r = 1 / sqrt(sum_j(x_j^2) / H + eps)          (fp32; x converted to fp32 exactly)
//   y_j = round(w_j * round(x_j * r))              (round: to the storage dtype; identity
//                                                  for fp32; the product in fp32)
// The sum of squares runs in one fixed order per row (kRmsLanes strided partial sums, then a
// fixed pairwise tree) on the CPU, and in the CUDA kernel's own fixed order: a row's result
// never depends on the other rows of the call, its batch size or the thread count.
#pragma once

#include <math.h>

#include "adaeagle/common.h"
#include "adaeagle/gguf_blocks.h"  // bf16_bits_to_f32, f32_to_bf16_bits

namespace adaeagle {

constexpr int kRmsLanes = 8;

enum RmsDtype : int32_t { kRmsFloat32 = 0, kRmsBFloat16 = 1, kRmsFloat16 = 2 };

// sum_j x_j^2 of one fp32 row in the CPU's fixed order.
ADAEAGLE_HD float rms_sum_squares(const float* x, int64_t h) {
  float lane[kRmsLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + kRmsLanes <= h; j += kRmsLanes) {
    for (int l = 0; l < kRmsLanes; ++l) lane[l] += x[j + l] * x[j + l];
  }
  for (int l = 0; j < h; ++j, ++l) lane[l] += x[j] * x[j];
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

ADAEAGLE_HD float rms_inverse(float sum_squares, int64_t h, float eps) {
  return 1.0f / sqrtf(sum_squares / static_cast<float>(h) + eps);
}

}  // namespace adaeagle

#if defined(ADAEAGLE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>

namespace adaeagle {

// x, weight, out: [n, h] / [h] / [n, h] of `dtype`, contiguous. One block per row.
cudaError_t launch_rms_norm(const void* x, const void* weight, void* out, RmsDtype dtype,
                            int64_t n, int64_t h, float eps, cudaStream_t stream);

}  // namespace adaeagle
#endif
