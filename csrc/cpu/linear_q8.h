// The 8-bit-activation mode of linear (act_quant = 8) for Q4_0 / Q4_1 / Q8_0 weights.
//
// Every row of x is quantised on its own, per block of 32 values x_0..x_31 (bf16 x converted
// to fp32 first, which is exact):
//   amax = max |x_j|;  d = amax / 127;  id = d != 0 ? 1 / d : 0;  q_j = rne(x_j * id)  (int8)
//   sum = sum_j q_j;  s = d * float(sum)
// (fp32 IEEE operations, rne = round half to even). A block holding a NaN or an infinity gets
// d = s = NaN and q = 0, so its row's outputs are NaN. Output (m, n) is then, for blocks
// b = 0, 1, ... of row n of W in increasing order, starting from acc = 0:
//   Q8_0: acc = fma(dw * d, float(sum_j w_j q_j), acc)                    (w_j the int8 weights)
//   Q4_0: acc = fma(dw * d, float(sum_j u_j q_j - 8 * sum), acc)          (u_j the nibbles)
//   Q4_1: acc = fma(mw, s, fma(dw * d, float(sum_j u_j q_j), acc))        (mw the block's m)
// with dw * d rounded to fp32 and the integer block dot products exact (|sum| < 2^24); then
// y = acc + bias. Nothing depends on the other rows, M, the thread count or the ISA.
#pragma once

#include <cstdint>

#include "cpu/linear.h"

namespace adaeagle::cpu {

// One call's quantised activations: row m, block b at [m * blocks + b].
struct ActQ8 {
  const int8_t* q;     // [M, K]
  const float* d;      // [M, K / 32]
  const int32_t* sum;  // [M, K / 32]
  const float* s;      // [M, K / 32]
  int64_t blocks;      // K / 32
};

// `out` holds the weights and the output (its x is unused).
struct LinearQ8Args {
  LinearArgs out;
  ActQ8 act;
};

// Quantises rows [m_begin, m_end) of x (fp32 [M, K]) into the buffers behind `act`.
void quantize_rows_q8_scalar(const float* x, int64_t k, int64_t m_begin, int64_t m_end,
                             int8_t* q, float* d, int32_t* sum, float* s);
void quantize_rows_q8_avx2(const float* x, int64_t k, int64_t m_begin, int64_t m_end,
                           int8_t* q, float* d, int32_t* sum, float* s);

// One output element in the order above (the reference loop; also the AVX2 tail).
float dot_q8_scalar(const LinearQ8Args& a, int64_t m, int64_t n);

// Output rows [n_begin, n_end) for all M rows.
void linear_q8_rows_scalar(const LinearQ8Args& a, int64_t n_begin, int64_t n_end);
void linear_q8_rows_avx2(const LinearQ8Args& a, int64_t n_begin, int64_t n_end);

// The act_q8 branch of linear(): x fp32 [M, K], weights of an integer type.
void linear_q8(const float* x, LinearIsa isa, const LinearArgs& args);

}  // namespace adaeagle::cpu
