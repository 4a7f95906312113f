#include "cpu/rms_norm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace adaeagle::cpu {
namespace {

// Rows per thread task: a decode step's few rows run on the calling thread (no barrier).
constexpr int64_t kElementsPerTask = 1 << 16;

void row_f32(const float* x, const float* w, float* y, int64_t h, float eps) {
  const float r = rms_inverse(rms_sum_squares(x, h), h, eps);
  for (int64_t j = 0; j < h; ++j) y[j] = w[j] * (x[j] * r);
}

void row_bf16(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t h, float eps,
              float* buf) {
  for (int64_t j = 0; j < h; ++j) buf[j] = bf16_bits_to_f32(x[j]);
  const float r = rms_inverse(rms_sum_squares(buf, h), h, eps);
  for (int64_t j = 0; j < h; ++j) {
    const float normed = f32_round_bf16(buf[j] * r);
    y[j] = f32_to_bf16_bits(bf16_bits_to_f32(w[j]) * normed);
  }
}

}  // namespace

void rms_norm(const void* x, const void* weight, void* out, RmsDtype dtype, int64_t n,
              int64_t h, float eps) {
  if (n == 0 || h == 0) return;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / h);
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    if (dtype == kRmsFloat32) {
      const auto* xs = static_cast<const float*>(x);
      auto* ys = static_cast<float*>(out);
      for (int64_t i = begin; i < end; ++i) {
        row_f32(xs + i * h, static_cast<const float*>(weight), ys + i * h, h, eps);
      }
      return;
    }
    thread_local std::vector<float> buf;  // this worker's row in fp32, reused
    buf.resize(static_cast<size_t>(h));
    const auto* xs = static_cast<const uint16_t*>(x);
    auto* ys = static_cast<uint16_t*>(out);
    for (int64_t i = begin; i < end; ++i) {
      row_bf16(xs + i * h, static_cast<const uint16_t*>(weight), ys + i * h, h, eps,
               buf.data());
    }
  });
}

}  // namespace adaeagle::cpu
