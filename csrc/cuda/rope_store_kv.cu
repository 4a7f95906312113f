// rope_store_kv on CUDA: one thread per (token, head, element pair e / e + D/2) over the H q,
// Hkv k and Hkv v heads of each token. __fmul_rn / __fadd_rn keep each product rounded on its
// own (no FMA), as PyTorch's separate mul and add kernels.
#include "adaeagle/cuda_convert.cuh"
#include "adaeagle/rope_store_kv.h"

namespace adaeagle {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

// round(round(x * c) + round(partner * s)) in T.
template <typename T>
__device__ __forceinline__ T rope_element(T x, T c, float partner, T s) {
  const float a = round_to<T>(__fmul_rn(to_float(x), to_float(c)));
  const float b = round_to<T>(__fmul_rn(partner, to_float(s)));
  return from_float<T>(__fadd_rn(a, b));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rope_store_kv_kernel(const T* __restrict__ qkv, const T* __restrict__ cos,
                         const T* __restrict__ sin, T* __restrict__ cache, int64_t layer,
                         const int64_t* __restrict__ req, const int64_t* __restrict__ rows,
                         T* __restrict__ q_out, RopeShape s) {
  const int64_t half = s.head_dim / 2;
  const int64_t heads = s.num_heads + 2 * s.num_kv_heads;
  const int64_t total = s.num_tokens * heads * half;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= total) return;
  const int64_t e = idx % half;
  const int64_t head = (idx / half) % heads;
  const int64_t i = idx / (half * heads);
  const T* x = qkv + i * rope_qkv_width(s) + head * s.head_dim;
  T* dst;
  if (head < s.num_heads) {
    dst = q_out + (i * s.num_heads + head) * s.head_dim;
  } else {
    const int64_t r = req[i], row = rows[i];
    if (r < 0 || r >= s.cache_batch || row < 0 || row >= s.s_max) return;
    const int64_t kv_head = head - s.num_heads;
    const int kv = kv_head < s.num_kv_heads ? 0 : 1;
    dst = cache + rope_cache_offset(s, layer, kv, r, row) +
          (kv_head - kv * s.num_kv_heads) * s.head_dim;
    if (kv == 1) {
      dst[e] = x[e];
      dst[e + half] = x[e + half];
      return;
    }
  }
  const T lo = x[e], hi = x[e + half];
  const T* c = cos + i * s.head_dim;
  const T* sn = sin + i * s.head_dim;
  dst[e] = rope_element(lo, c[e], -to_float(hi), sn[e]);
  dst[e + half] = rope_element(hi, c[e + half], to_float(lo), sn[e + half]);
}

template <typename T>
cudaError_t launch(const void* qkv, const void* cos, const void* sin, void* kv_cache,
                   int64_t layer, const int64_t* req, const int64_t* rows, void* q_out,
                   const RopeShape& s, cudaStream_t stream) {
  const int64_t total = s.num_tokens * (s.num_heads + 2 * s.num_kv_heads) * (s.head_dim / 2);
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  rope_store_kv_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(qkv), static_cast<const T*>(cos), static_cast<const T*>(sin),
      static_cast<T*>(kv_cache), layer, req, rows, static_cast<T*>(q_out), s);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rope_store_kv(const void* qkv, const void* cos, const void* sin,
                                 void* kv_cache, int64_t layer, const int64_t* req,
                                 const int64_t* rows, void* q_out, RopeDtype dtype,
                                 RopeShape shape, cudaStream_t stream) {
  if (shape.num_tokens == 0) return cudaSuccess;
  switch (dtype) {
    case kRopeBFloat16:
      return launch<__nv_bfloat16>(qkv, cos, sin, kv_cache, layer, req, rows, q_out, shape,
                                   stream);
    case kRopeFloat16:
      return launch<__half>(qkv, cos, sin, kv_cache, layer, req, rows, q_out, shape, stream);
    default:
      return launch<float>(qkv, cos, sin, kv_cache, layer, req, rows, q_out, shape, stream);
  }
}

}  // namespace adaeagle
