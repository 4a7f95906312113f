// CPU entry point of linear (raw pointers; shapes as in adaeagle_ext/ops.py).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace adaeagle::cpu {

// Which inner loop `linear` runs: chosen per call from the CPU and ADAEAGLE_LINEAR_ISA.
enum class LinearIsa { kScalar, kAvx2 };

// The arguments of one call, with x already in fp32. Output element (m, n) lives at
// y[m * N + n], fp32 or bf16 bits.
struct LinearArgs {
  const float* x;       // [M, K]
  const uint8_t* w;     // [N, row_bytes], GGUF blocks
  int64_t row_bytes;
  int type;             // GgmlType
  const float* bias;    // [N] or nullptr
  void* y;              // [M, N]
  bool y_bf16;
  int64_t m, n, k;
};

// Reduction order, the same for every output element whatever M, the thread count or the ISA:
// 8 lanes, lane l accumulates w[k] * x[k] for k = l, l + 8, l + 16, ... in increasing k with a
// fused multiply-add (a last group shorter than 8 is padded with zeros); then
// y = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) + bias. Weights are dequantised exactly
// as gguf.quants.dequantize does. So one row's result never depends on the other rows.
//
// x: fp32 [M, K] (x_bf16 = false) or bf16 bits; ISA from ADAEAGLE_LINEAR_ISA (auto | avx2 |
// scalar, read at every call); raises a c10::Error when the requested ISA is unavailable.
// act_q8: for Q4_0 / Q4_1 / Q8_0 weights, run the 8-bit-activation mode of linear_q8.h instead
// (ignored for F32 / F16 / BF16 weights).
void linear(const void* x, bool x_bf16, const uint8_t* w, int64_t row_bytes, int type,
            const float* bias, void* y, bool y_bf16, int64_t m, int64_t n, int64_t k,
            bool act_q8 = false);

// Output rows [n_begin, n_end) for all M rows; the AVX2 variant lives in linear_avx2.cpp.
void linear_rows_scalar(const LinearArgs& a, int64_t n_begin, int64_t n_end);
void linear_rows_avx2(const LinearArgs& a, int64_t n_begin, int64_t n_end);
bool cpu_has_avx2_fma_f16c();

// Adds the bias of column n to `value` and writes it to y[m, n] in y's dtype.
inline void store_output(const LinearArgs& a, int64_t m, int64_t n, float value) {
  if (a.bias != nullptr) value += a.bias[n];
  const int64_t at = m * a.n + n;
  if (a.y_bf16) {
    static_cast<c10::BFloat16*>(a.y)[at] = c10::BFloat16(value);
  } else {
    static_cast<float*>(a.y)[at] = value;
  }
}

}  // namespace adaeagle::cpu
