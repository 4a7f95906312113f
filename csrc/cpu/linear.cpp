#include "cpu/linear.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "adaeagle/gguf_blocks.h"
#include "cpu/linear_q8.h"

namespace adaeagle::cpu {
namespace {

// Output rows handed to a thread at a time: a multiple of every AVX2 tile width.
constexpr int64_t kRowsPerTask = 8;

LinearIsa pick_isa() {
  const char* env = std::getenv("ADAEAGLE_LINEAR_ISA");
  const bool has_avx2 = cpu_has_avx2_fma_f16c();
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) {
    return has_avx2 ? LinearIsa::kAvx2 : LinearIsa::kScalar;
  }
  if (std::strcmp(env, "scalar") == 0) return LinearIsa::kScalar;
  if (std::strcmp(env, "avx2") == 0) {
    TORCH_CHECK(has_avx2, "linear: ADAEAGLE_LINEAR_ISA=avx2 but this CPU lacks AVX2/FMA/F16C");
    return LinearIsa::kAvx2;
  }
  TORCH_CHECK(false, "linear: ADAEAGLE_LINEAR_ISA must be auto, avx2 or scalar, got '", env, "'");
}

}  // namespace

// The reference loop of the reduction order in linear.h, one output element at a time.
void linear_rows_scalar(const LinearArgs& a, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* row = a.w + n * a.row_bytes;
    for (int64_t m = 0; m < a.m; ++m) {
      const float* xm = a.x + m * a.k;
      float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k = 0; k < a.k; ++k) {
        lane[k % 8] = std::fma(gguf_weight(a.type, row, k), xm[k], lane[k % 8]);
      }
      const float sum = ((lane[0] + lane[4]) + (lane[2] + lane[6])) +
                        ((lane[1] + lane[5]) + (lane[3] + lane[7]));
      store_output(a, m, n, sum);
    }
  }
}

void linear(const void* x, bool x_bf16, const uint8_t* w, int64_t row_bytes, int type,
            const float* bias, void* y, bool y_bf16, int64_t m, int64_t n, int64_t k,
            bool act_q8) {
  const LinearIsa isa = pick_isa();
  if (m == 0 || n == 0) return;
  // bf16 -> fp32 is exact, so converting x up front changes no result.
  std::vector<float> x_f32;
  const float* xf = static_cast<const float*>(x);
  if (x_bf16) {
    x_f32.resize(static_cast<size_t>(m * k));
    const auto* xb = static_cast<const c10::BFloat16*>(x);
    for (int64_t i = 0; i < m * k; ++i) x_f32[i] = static_cast<float>(xb[i]);
    xf = x_f32.data();
  }
  const LinearArgs args{xf, w, row_bytes, type, bias, y, y_bf16, m, n, k};
  if (act_q8 && (type == kGgmlQ4_0 || type == kGgmlQ4_1 || type == kGgmlQ8_0)) {
    linear_q8(xf, isa, args);
    return;
  }
  auto rows = isa == LinearIsa::kAvx2 ? &linear_rows_avx2 : &linear_rows_scalar;
  // Threads split the output rows only, never K: each element is computed by one thread in
  // the fixed order, so the split cannot change a bit. A chunk holds at least ~256K
  // multiply-adds: below that a thread barrier costs more than it saves. (At ~1M the model's
  // one-token q/k/v, o and down projections ran on one thread: decode steps took 10% longer.)
  const int64_t tasks = (n + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t work_per_task = kRowsPerTask * k * m;
  const int64_t grain =
      std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, work_per_task));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    rows(args, begin * kRowsPerTask, std::min(n, end * kRowsPerTask));
  });
}

}  // namespace adaeagle::cpu
