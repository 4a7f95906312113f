// linear with 8-bit activations (linear_q8.h): the portable loops and the dispatcher.
#include "cpu/linear_q8.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "adaeagle/gguf_blocks.h"

namespace adaeagle::cpu {

void quantize_rows_q8_scalar(const float* x, int64_t k, int64_t m_begin, int64_t m_end,
                             int8_t* q, float* d, int32_t* sum, float* s) {
  const int64_t blocks = k / kQuantBlock;
  for (int64_t m = m_begin; m < m_end; ++m) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t at = m * blocks + b;
      const float* xb = x + m * k + b * kQuantBlock;
      int8_t* qb = q + m * k + b * kQuantBlock;
      float amax = 0.0f;
      bool finite = true;
      for (int j = 0; j < kQuantBlock; ++j) {
        finite = finite && std::isfinite(xb[j]);
        const float a = std::fabs(xb[j]);
        amax = a > amax ? a : amax;
      }
      if (!finite) {
        std::fill(qb, qb + kQuantBlock, int8_t{0});
        d[at] = s[at] = std::numeric_limits<float>::quiet_NaN();
        sum[at] = 0;
        continue;
      }
      const float scale = amax / 127.0f;
      const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
      int32_t total = 0;
      for (int j = 0; j < kQuantBlock; ++j) {
        // |x_j * inv| <= 127 (+ a few ulps), so the rounded value fits an int8
        const int32_t v = static_cast<int32_t>(std::nearbyint(xb[j] * inv));
        qb[j] = static_cast<int8_t>(v);
        total += v;
      }
      d[at] = scale;
      sum[at] = total;
      s[at] = scale * static_cast<float>(total);
    }
  }
}

float dot_q8_scalar(const LinearQ8Args& a, int64_t m, int64_t n) {
  const int type = a.out.type;
  const int nbytes = ggml_block_bytes(type);
  const uint8_t* row = a.out.w + n * a.out.row_bytes;
  float acc = 0.0f;
  for (int64_t b = 0; b < a.act.blocks; ++b) {
    const uint8_t* blk = row + b * nbytes;
    const int64_t at = m * a.act.blocks + b;
    const int8_t* xq = a.act.q + at * kQuantBlock;
    const float dw = f16_bits_to_f32(load_u16(blk));
    int32_t dot = 0;
    if (type == kGgmlQ8_0) {
      for (int j = 0; j < kQuantBlock; ++j) dot += static_cast<int8_t>(blk[2 + j]) * xq[j];
    } else {
      const uint8_t* qs = blk + (type == kGgmlQ4_1 ? 4 : 2);
      for (int j = 0; j < kQuantBlock; ++j) dot += q4_nibble(qs, j) * xq[j];
      if (type == kGgmlQ4_0) dot -= 8 * a.act.sum[at];
    }
    const float scale = dw * a.act.d[at];
    acc = std::fma(scale, static_cast<float>(dot), acc);
    if (type == kGgmlQ4_1) acc = std::fma(f16_bits_to_f32(load_u16(blk + 2)), a.act.s[at], acc);
  }
  return acc;
}

void linear_q8_rows_scalar(const LinearQ8Args& a, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t m = 0; m < a.out.m; ++m) store_output(a.out, m, n, dot_q8_scalar(a, m, n));
  }
}

void linear_q8(const float* x, LinearIsa isa, const LinearArgs& args) {
  const int64_t m = args.m, n = args.n, k = args.k, blocks = k / kQuantBlock;
  // Reused across calls on this thread: a decode step allocates nothing here once warm.
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d, s;
  thread_local std::vector<int32_t> sum;
  q.resize(static_cast<size_t>(m * k));
  d.resize(static_cast<size_t>(m * blocks));
  s.resize(d.size());
  sum.resize(d.size());
  // Plain pointers: inside the parallel regions a thread_local name would be the worker's own.
  int8_t* const qp = q.data();
  float* const dp = d.data();
  float* const sp = s.data();
  int32_t* const sump = sum.data();
  const bool avx2 = isa == LinearIsa::kAvx2;
  auto quantize = avx2 ? &quantize_rows_q8_avx2 : &quantize_rows_q8_scalar;
  const int64_t quant_grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, k));
  at::parallel_for(0, m, quant_grain, [&](int64_t begin, int64_t end) {
    quantize(x, k, begin, end, qp, dp, sump, sp);
  });
  const LinearQ8Args q8{args, ActQ8{qp, dp, sump, sp, blocks}};
  auto rows = avx2 ? &linear_q8_rows_avx2 : &linear_q8_rows_scalar;
  // Threads split the output rows only (8 at a time, the AVX2 tile width). A chunk holds at
  // least ~256K multiply-adds, as in the float mode (at ~1M the one-token q/k/v, o and down
  // projections ran on one thread, and all linears of a one-token step took 1.3-1.6x longer).
  constexpr int64_t kRowsPerTask = 8;
  const int64_t tasks = (n + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t work_per_task = kRowsPerTask * k * m;
  const int64_t grain =
      std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, work_per_task));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    rows(q8, begin * kRowsPerTask, std::min(n, end * kRowsPerTask));
  });
}

}  // namespace adaeagle::cpu
