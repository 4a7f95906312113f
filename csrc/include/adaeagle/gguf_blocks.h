// GGUF weight blocks: type numbers, block sizes and the per-element dequantisation shared by the
// portable CPU kernel and the CUDA kernel.
//
// A packed weight is [N, row_bytes] bytes: output row n holds its K weights as K / block_size
// consecutive blocks in the ggml layout (the same bytes a .gguf file stores):
//   F32  (0):  K float32                       BF16 (30): K bfloat16      F16 (1): K float16
//   Q4_0 (2):  32 weights in 18 bytes: fp16 d, 16 bytes of nibbles; w = d * (q - 8)
//   Q4_1 (3):  32 weights in 20 bytes: fp16 d, fp16 m, 16 bytes of nibbles; w = d * q + m
//   Q8_0 (8):  32 weights in 34 bytes: fp16 d, 32 int8 q; w = d * q
// In the nibble formats byte j holds weight j in its low nibble and weight j + 16 in its high one.
#pragma once

#include "adaeagle/common.h"

namespace adaeagle {

enum GgmlType : int32_t {
  kGgmlF32 = 0,
  kGgmlF16 = 1,
  kGgmlQ4_0 = 2,
  kGgmlQ4_1 = 3,
  kGgmlQ8_0 = 8,
  kGgmlBF16 = 30,
};

constexpr int kQuantBlock = 32;  // weights per Q4_0 / Q4_1 / Q8_0 block

ADAEAGLE_HD bool ggml_type_supported(int type) {
  return type == kGgmlF32 || type == kGgmlF16 || type == kGgmlQ4_0 || type == kGgmlQ4_1 ||
         type == kGgmlQ8_0 || type == kGgmlBF16;
}

// Weights per block (K must be a multiple of it); 0 for an unsupported type.
ADAEAGLE_HD int ggml_block_size(int type) {
  switch (type) {
    case kGgmlF32: case kGgmlF16: case kGgmlBF16: return 1;
    case kGgmlQ4_0: case kGgmlQ4_1: case kGgmlQ8_0: return kQuantBlock;
    default: return 0;
  }
}

// Bytes per block; 0 for an unsupported type.
ADAEAGLE_HD int ggml_block_bytes(int type) {
  switch (type) {
    case kGgmlF32: return 4;
    case kGgmlF16: case kGgmlBF16: return 2;
    case kGgmlQ4_0: return 18;
    case kGgmlQ4_1: return 20;
    case kGgmlQ8_0: return 34;
    default: return 0;
  }
}

ADAEAGLE_HD const char* ggml_type_name(int type) {
  switch (type) {
    case kGgmlF32: return "F32";
    case kGgmlF16: return "F16";
    case kGgmlQ4_0: return "Q4_0";
    case kGgmlQ4_1: return "Q4_1";
    case kGgmlQ8_0: return "Q8_0";
    case kGgmlBF16: return "BF16";
    default: return "unsupported";
  }
}

// Exact IEEE conversions from raw bits (no intrinsics, so host and device agree).
ADAEAGLE_HD float bits_to_f32(uint32_t bits) {
  union { uint32_t u; float f; } v{bits};
  return v.f;
}

ADAEAGLE_HD uint32_t f32_to_bits(float f) {
  union { float f; uint32_t u; } v{f};
  return v.u;
}

ADAEAGLE_HD float bf16_bits_to_f32(uint16_t h) {
  return bits_to_f32(static_cast<uint32_t>(h) << 16);
}

// f rounded to the nearest bf16 (ties to even; a NaN stays a quiet NaN, as c10::BFloat16),
// as fp32: all in 32-bit lanes, which vectorise far better than a round trip through 16 bits.
ADAEAGLE_HD float f32_round_bf16(float f) {
  const uint32_t u = f32_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const uint32_t quiet_nan = (u & 0xffff0000u) | 0x00400000u;
  return bits_to_f32((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// f rounded to bf16, as its bits.
ADAEAGLE_HD uint16_t f32_to_bf16_bits(float f) {
  return static_cast<uint16_t>(f32_to_bits(f32_round_bf16(f)) >> 16);
}

ADAEAGLE_HD float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_f32(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp != 0) return bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_to_f32(sign);  // signed zero
  int e = 113;  // subnormal: normalise the mantissa
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return bits_to_f32(sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3ffu) << 13));
}

// Little-endian 16-bit load from a possibly unaligned address.
ADAEAGLE_HD uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

ADAEAGLE_HD uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

// Nibble j (0..31) of a 16-byte Q4 payload.
ADAEAGLE_HD int q4_nibble(const uint8_t* qs, int j) {
  return j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
}

// Weight k (0 <= k < K) of one packed row of `type`, in fp32: the value gguf.quants.dequantize
// gives. d * q is exact in fp32 (q has at most 8 bits, d 11), so a compiler that fuses Q4_1's
// d * q + m into one multiply-add still rounds once, like gguf.
ADAEAGLE_HD float gguf_weight(int type, const uint8_t* row, int64_t k) {
  switch (type) {
    case kGgmlF32: return bits_to_f32(load_u32(row + 4 * k));
    case kGgmlF16: return f16_bits_to_f32(load_u16(row + 2 * k));
    case kGgmlBF16: return bf16_bits_to_f32(load_u16(row + 2 * k));
    default: break;
  }
  const int64_t b = k / kQuantBlock;
  const int j = static_cast<int>(k % kQuantBlock);
  if (type == kGgmlQ8_0) {
    const uint8_t* blk = row + b * 34;
    return f16_bits_to_f32(load_u16(blk)) * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
  }
  if (type == kGgmlQ4_0) {
    const uint8_t* blk = row + b * 18;
    return f16_bits_to_f32(load_u16(blk)) * static_cast<float>(q4_nibble(blk + 2, j) - 8);
  }
  if (type == kGgmlQ4_1) {
    const uint8_t* blk = row + b * 20;
    const float dq = f16_bits_to_f32(load_u16(blk)) * static_cast<float>(q4_nibble(blk + 4, j));
    return dq + f16_bits_to_f32(load_u16(blk + 2));
  }
  return 0.0f;
}

}  // namespace adaeagle

#if defined(ADAEAGLE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
namespace adaeagle {
// y[m, n] = sum_k w[n, k] * x[m, k] (+ bias[n]) on `stream`, one warp per output element.
// x is fp32 (x_bf16 = false) or bf16 bits; y is fp32 or bf16 bits (y_bf16); bias may be null.
cudaError_t launch_linear(const void* x, bool x_bf16, const uint8_t* weight, int type,
                          int64_t row_bytes, const float* bias, void* y, bool y_bf16, int64_t m,
                          int64_t n, int64_t k, cudaStream_t stream);
}  // namespace adaeagle
#endif
