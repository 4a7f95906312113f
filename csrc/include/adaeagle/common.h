// Shared definitions of the torch-free kernel code: compiled by the host compiler for the CPU
// kernels and by nvcc for the CUDA kernels.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ADAEAGLE_HD __host__ __device__ __forceinline__
#else
#define ADAEAGLE_HD inline
#endif

namespace adaeagle {

// A draft tree holds at most this many nodes, root included, so that one node's ancestor set
// fits in one 64-bit row.
constexpr int kMaxTreeNodes = 64;

// Bit patterns travel as int64 tensors; these reinterpret without changing a bit.
ADAEAGLE_HD int64_t bits_to_i64(uint64_t bits) {
  return static_cast<int64_t>(bits);
}
ADAEAGLE_HD uint64_t i64_to_bits(int64_t value) {
  return static_cast<uint64_t>(value);
}

ADAEAGLE_HD int popcount64(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __popcll(bits);
#else
  return __builtin_popcountll(bits);
#endif
}

}  // namespace adaeagle
