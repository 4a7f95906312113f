// Each product of x * cos + rotate_half(x) * sin is rounded on its own, as PyTorch's separate
// ops do: no FMA contraction in this file (GCC contracts across C++ statements by default
// when the target has FMA). Before the includes, so every function here is compiled alike.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "cpu/rope_store_kv.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

#include "adaeagle/gguf_blocks.h"  // bf16_bits_to_f32
#include "adaeagle/rms_norm.h"     // rms_f32_to_bf16

namespace adaeagle::cpu {
namespace {

// Elements per thread task: a decode step's tokens (up to 8 at least) run on the calling thread.
constexpr int64_t kElementsPerTask = 1 << 14;
constexpr int64_t kMinTokensPerTask = 8;

// Element types: float, or bf16 as its bits.
float load(float x) { return x; }
float load(uint16_t x) { return bf16_bits_to_f32(x); }
void store(float v, float* out) { *out = v; }
void store(float v, uint16_t* out) { *out = rms_f32_to_bf16(v); }

// v rounded to the storage type T, back in fp32.
template <typename T>
float round_to(float v) {
  T t;
  store(v, &t);
  return load(t);
}

// One q or k head: out = round(round(x * cos) + round(rotate_half(x) * sin)).
template <typename T>
void rope_head(const T* x, const T* cos, const T* sin, T* out, int64_t half) {
  for (int64_t e = 0; e < half; ++e) {
    const float a = round_to<T>(load(x[e]) * load(cos[e]));
    const float b = round_to<T>(-load(x[e + half]) * load(sin[e]));
    store(a + b, out + e);
  }
  for (int64_t e = half; e < 2 * half; ++e) {
    const float a = round_to<T>(load(x[e]) * load(cos[e]));
    const float b = round_to<T>(load(x[e - half]) * load(sin[e]));
    store(a + b, out + e);
  }
}

template <typename T>
void run(const T* qkv, const T* cos, const T* sin, T* cache, int64_t layer,
         const int64_t* req, const int64_t* rows, T* q_out, const RopeShape& s) {
  const int64_t d = s.head_dim, half = d / 2, width = rope_qkv_width(s);
  const int64_t kv_row = s.num_kv_heads * d;
  const int64_t grain = std::max(kMinTokensPerTask, kElementsPerTask / std::max<int64_t>(1, width));
  at::parallel_for(0, s.num_tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* x = qkv + i * width;
      const T* c = cos + i * d;
      const T* sn = sin + i * d;
      for (int64_t h = 0; h < s.num_heads; ++h) {
        rope_head(x + h * d, c, sn, q_out + (i * s.num_heads + h) * d, half);
      }
      T* k_dst = cache + rope_cache_offset(s, layer, 0, req[i], rows[i]);
      const T* k_src = x + s.num_heads * d;
      for (int64_t h = 0; h < s.num_kv_heads; ++h) {
        rope_head(k_src + h * d, c, sn, k_dst + h * d, half);
      }
      T* v_dst = cache + rope_cache_offset(s, layer, 1, req[i], rows[i]);
      std::memcpy(v_dst, k_src + kv_row, static_cast<size_t>(kv_row) * sizeof(T));
    }
  });
}

}  // namespace

void rope_store_kv(const void* qkv, const void* cos, const void* sin, void* kv_cache,
                   int64_t layer, const int64_t* req, const int64_t* rows, void* q_out,
                   RopeDtype dtype, const RopeShape& shape) {
  for (int64_t i = 0; i < shape.num_tokens; ++i) {
    TORCH_CHECK(req[i] >= 0 && req[i] < shape.cache_batch, "rope_store_kv: req[", i, "]=",
                req[i], " is out of range [0, ", shape.cache_batch, ") (kv_cache dim 2)");
    TORCH_CHECK(rows[i] >= 0 && rows[i] < shape.s_max, "rope_store_kv: rows[", i, "]=",
                rows[i], " is out of range [0, ", shape.s_max, ") (kv_cache dim 3)");
  }
  if (shape.num_tokens == 0) return;
  if (dtype == kRopeFloat32) {
    run(static_cast<const float*>(qkv), static_cast<const float*>(cos),
        static_cast<const float*>(sin), static_cast<float*>(kv_cache), layer, req, rows,
        static_cast<float*>(q_out), shape);
  } else {
    run(static_cast<const uint16_t*>(qkv), static_cast<const uint16_t*>(cos),
        static_cast<const uint16_t*>(sin), static_cast<uint16_t*>(kv_cache), layer, req, rows,
        static_cast<uint16_t*>(q_out), shape);
  }
}

}  // namespace adaeagle::cpu
