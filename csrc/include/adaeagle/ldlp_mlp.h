// ldlp_mlp: per-row logic of the LDLP (AdaEAGLE's draft-length predictor), shared by the CPU
// loop and the CUDA kernel.
//
// The network, for one row with emb e [H] and hidden state f [H]:
//   x = w_in @ concat(e / rms(e), f / rms(f)) + b_in          rms(v) = sqrt(mean(v^2) + eps)
//   x = x + silu(w_blocks[l] @ x + b_blocks[l])                for l = 0, 1, 2
//   y = w_out @ x + b_out                                      (one scalar, "raw")
//   k = clamp(round_half_even(y), 0, k_max)                    (int32, NaN -> 0)
// Weights use PyTorch's Linear layout (row-major, out x in). The input projection is computed
// as s_e * (w_in[:, :H] @ e) + s_f * (w_in[:, H:] @ f), so the normalised concatenation is never
// materialised. All arithmetic is fp32 whatever the storage type.
#pragma once

#include <math.h>

#include <cstring>

#include "adaeagle/common.h"

// Host code forces these inline: the CPU kernel compiles its loops once per instruction set
// (AVX2 and baseline), and only inlined helpers take on the caller's instruction set.
#if defined(__CUDACC__) || defined(__HIPCC__) || !defined(__GNUC__)
#define ADAEAGLE_LDLP_HD ADAEAGLE_HD
#else
#define ADAEAGLE_LDLP_HD inline __attribute__((always_inline))
#endif

namespace adaeagle {

constexpr int kLdlpBlocks = 3;
constexpr int kLdlpMaxWidth = 1024;
// Independent partial sums per host dot product (two AVX registers); fixed, so that a row's
// result never depends on how it was tiled with other rows or neurons.
constexpr int kLdlpLanes = 16;

enum LdlpDtype : int32_t { kLdlpFloat32 = 0, kLdlpBFloat16 = 1 };

// bfloat16 storage: same bits and layout as c10::BFloat16 and __nv_bfloat16.
struct LdlpBf16 {
  uint16_t bits;
};

ADAEAGLE_LDLP_HD float ldlp_load(float v) {
  return v;
}
ADAEAGLE_LDLP_HD float ldlp_load(LdlpBf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

ADAEAGLE_LDLP_HD float ldlp_silu(float x) {
  return x / (1.0f + expf(-x));
}

// 1 / sqrt(sum_sq / n + eps): the RMS-norm scale of a vector whose squares sum to sum_sq.
ADAEAGLE_LDLP_HD float ldlp_rms_scale(float sum_sq, int n, float eps) {
  return 1.0f / sqrtf(sum_sq / static_cast<float>(n) + eps);
}

// clamp(round(y), 0, k_max) with round half to even (rintf in the default rounding mode, as
// torch.round): 2.5 -> 2, 3.5 -> 4, -0.5 -> 0. NaN maps to 0.
ADAEAGLE_LDLP_HD int32_t ldlp_clamp_round(float y, int32_t k_max) {
  const float r = rintf(y);
  if (!(r > 0.0f)) return 0;
  if (r >= static_cast<float>(k_max)) return k_max;
  return static_cast<int32_t>(r);
}

// Sum of squares of x[0..n) in the host lane order.
template <typename T>
ADAEAGLE_LDLP_HD float ldlp_sum_sq(const T* x, int n) {
  float acc[kLdlpLanes] = {};
  int i = 0;
  for (; i + kLdlpLanes <= n; i += kLdlpLanes) {
    for (int l = 0; l < kLdlpLanes; ++l) {
      const float v = ldlp_load(x[i + l]);
      acc[l] += v * v;
    }
  }
  for (int s = kLdlpLanes / 2; s > 0; s /= 2) {
    for (int l = 0; l < s; ++l) acc[l] += acc[l + s];
  }
  for (; i < n; ++i) {
    const float v = ldlp_load(x[i]);
    acc[0] += v * v;
  }
  return acc[0];
}

// A tile of dot products: out[r][c] = sum_i w[c * w_stride + i] * x[r * x_stride + i] for
// i in [0, n), R input rows by C weight rows. Each (r, c) keeps kLdlpLanes = 16 partial sums
// (lane l takes the terms i = l mod 16), combines them by halving (l += l + 8, then + 4, + 2,
// + 1) and then adds the tail terms in order. That order is the same whatever R and C are, so
// tiles only share loads and a row's result never depends on its neighbours.
#if defined(__GNUC__) && !defined(__CUDACC__) && !defined(__HIPCC__)
// Host build with GCC/Clang: the 16 lanes are two 8-float vectors (GCC vector extensions), which
// the compiler maps onto whatever instruction set the caller is compiled for (AVX2 + FMA in
// the CPU kernel's AVX2 clone, SSE pairs otherwise).
typedef float LdlpVec8 __attribute__((vector_size(32)));

ADAEAGLE_LDLP_HD void ldlp_load8(LdlpVec8& v, const float* p) {
  std::memcpy(&v, p, sizeof(v));
}
ADAEAGLE_LDLP_HD void ldlp_load8(LdlpVec8& v, const LdlpBf16* p) {
  typedef uint16_t Half8 __attribute__((vector_size(16)));
  typedef uint32_t Word8 __attribute__((vector_size(32)));
  Half8 h;
  std::memcpy(&h, p, sizeof(h));
  const Word8 u = __builtin_convertvector(h, Word8) << 16;
  std::memcpy(&v, &u, sizeof(v));
}

template <int R, int C, typename TW, typename TX>
ADAEAGLE_LDLP_HD void ldlp_dot_tile(const TW* w, int64_t w_stride, const TX* x, int64_t x_stride,
                                    int n, float (&out)[R][C]) {
  static_assert(kLdlpLanes == 16, "two 8-float vectors per dot product");
  LdlpVec8 acc[R][C][2];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) acc[r][c][0] = acc[r][c][1] = LdlpVec8{};
  }
  int i = 0;
  for (; i + kLdlpLanes <= n; i += kLdlpLanes) {
    for (int c = 0; c < C; ++c) {
      LdlpVec8 w0, w1;
      ldlp_load8(w0, w + c * w_stride + i);
      ldlp_load8(w1, w + c * w_stride + i + 8);
      for (int r = 0; r < R; ++r) {
        LdlpVec8 x0, x1;
        ldlp_load8(x0, x + r * x_stride + i);
        ldlp_load8(x1, x + r * x_stride + i + 8);
        acc[r][c][0] += w0 * x0;
        acc[r][c][1] += w1 * x1;
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      const LdlpVec8 s = acc[r][c][0] + acc[r][c][1];
      float sum = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
      for (int j = i; j < n; ++j) sum += ldlp_load(w[c * w_stride + j]) * ldlp_load(x[r * x_stride + j]);
      out[r][c] = sum;
    }
  }
}
#else
template <int R, int C, typename TW, typename TX>
ADAEAGLE_LDLP_HD void ldlp_dot_tile(const TW* w, int64_t w_stride, const TX* x, int64_t x_stride,
                                    int n, float (&out)[R][C]) {
  float acc[R][C][kLdlpLanes] = {};
  int i = 0;
  for (; i + kLdlpLanes <= n; i += kLdlpLanes) {
    for (int c = 0; c < C; ++c) {
      for (int r = 0; r < R; ++r) {
        for (int l = 0; l < kLdlpLanes; ++l) {
          acc[r][c][l] += ldlp_load(w[c * w_stride + i + l]) * ldlp_load(x[r * x_stride + i + l]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      for (int s = kLdlpLanes / 2; s > 0; s /= 2) {
        for (int l = 0; l < s; ++l) acc[r][c][l] += acc[r][c][l + s];
      }
      float sum = acc[r][c][0];
      for (int j = i; j < n; ++j) sum += ldlp_load(w[c * w_stride + j]) * ldlp_load(x[r * x_stride + j]);
      out[r][c] = sum;
    }
  }
}
#endif

// One thread's share of a dot product split over `step` threads (a CUDA warp): the terms
// i = start, start + step, ... below n.
template <typename TW, typename TX>
ADAEAGLE_LDLP_HD float ldlp_dot_strided(const TW* w, const TX* x, int n, int start, int step) {
  float acc = 0.0f;
  for (int i = start; i < n; i += step) acc += ldlp_load(w[i]) * ldlp_load(x[i]);
  return acc;
}

template <typename T>
ADAEAGLE_LDLP_HD float ldlp_sum_sq_strided(const T* x, int n, int start, int step) {
  float acc = 0.0f;
  for (int i = start; i < n; i += step) {
    const float v = ldlp_load(x[i]);
    acc += v * v;
  }
  return acc;
}

#if defined(ADAEAGLE_WITH_CUDA) || defined(__CUDACC__)
}  // namespace adaeagle
#include <cuda_runtime_api.h>
namespace adaeagle {
// Launches ldlp_mlp on `stream`: one block per row. emb/hidden hold act_dtype values [B, H];
// the six weight tensors hold weight_dtype values in the layout above. raw and max_len may be
// null; max_len is zeroed on the stream and then raised to the batch maximum.
cudaError_t launch_ldlp_mlp(const void* emb, const void* hidden, LdlpDtype act_dtype,
                            const void* w_in, const void* b_in, const void* w_blocks,
                            const void* b_blocks, const void* w_out, const void* b_out,
                            LdlpDtype weight_dtype, int batch, int hidden_size, int width,
                            int32_t k_max, float eps, int32_t* lengths, float* raw,
                            int32_t* max_len, cudaStream_t stream);
#endif

}  // namespace adaeagle
