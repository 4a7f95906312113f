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

#include "adaeagle/gguf_blocks.h"  // bf16_bits_to_f32, f32_round_bf16, f32_to_bf16_bits

// The element loops are compiled twice, for baseline x86-64 (SSE2) and for AVX2 (twice as wide;
// picked at run time): always_inline lets them take the ISA of the function they land in.
#define ROPE_INLINE __attribute__((always_inline)) inline
#if defined(__x86_64__) || defined(__i386__)
#define ROPE_HAS_AVX2_CLONE 1
#define ROPE_AVX2 __attribute__((target("avx2")))
#endif

namespace adaeagle::cpu {
namespace {

// Elements per thread task: a decode step's tokens (up to 8 at least) run on the calling thread.
constexpr int64_t kElementsPerTask = 1 << 14;
constexpr int64_t kMinTokensPerTask = 8;

// Element types: float, or bf16 as its bits.
ROPE_INLINE float load(float x) { return x; }
ROPE_INLINE float load(uint16_t x) { return bf16_bits_to_f32(x); }
ROPE_INLINE void store(float v, float* out) { *out = v; }
ROPE_INLINE void store(float v, uint16_t* out) {
  *out = f32_to_bf16_bits(v);
}
ROPE_INLINE float round_to(float v, const float*) { return v; }
ROPE_INLINE float round_to(float v, const uint16_t*) { return f32_round_bf16(v); }

// One q or k head: out = round(round(x * cos) + round(rotate_half(x) * sin)).
template <typename T>
ROPE_INLINE void rope_head(const T* __restrict__ x, const T* __restrict__ cos,
                           const T* __restrict__ sin, T* __restrict__ out, int64_t half) {
  for (int64_t e = 0; e < half; ++e) {
    const float a = round_to(load(x[e]) * load(cos[e]), x);
    const float b = round_to(-load(x[e + half]) * load(sin[e]), x);
    store(a + b, out + e);
  }
  for (int64_t e = half; e < 2 * half; ++e) {
    const float a = round_to(load(x[e]) * load(cos[e]), x);
    const float b = round_to(load(x[e - half]) * load(sin[e]), x);
    store(a + b, out + e);
  }
}

template <typename T>
struct Args {
  const T* qkv;
  const T* cos;
  const T* sin;
  T* cache;
  int64_t layer;
  const int64_t* req;
  const int64_t* rows;
  T* q_out;
  RopeShape s;
};

template <typename T>
ROPE_INLINE void tokens_body(const Args<T>& a, int64_t begin, int64_t end) {
  const RopeShape& s = a.s;
  const int64_t d = s.head_dim, half = d / 2, width = rope_qkv_width(s);
  const int64_t kv_row = s.num_kv_heads * d;
  for (int64_t i = begin; i < end; ++i) {
    const T* x = a.qkv + i * width;
    const T* c = a.cos + i * d;
    const T* sn = a.sin + i * d;
    for (int64_t h = 0; h < s.num_heads; ++h) {
      rope_head(x + h * d, c, sn, a.q_out + (i * s.num_heads + h) * d, half);
    }
    T* k_dst = a.cache + rope_cache_offset(s, a.layer, 0, a.req[i], a.rows[i]);
    const T* k_src = x + s.num_heads * d;
    for (int64_t h = 0; h < s.num_kv_heads; ++h) {
      rope_head(k_src + h * d, c, sn, k_dst + h * d, half);
    }
    T* v_dst = a.cache + rope_cache_offset(s, a.layer, 1, a.req[i], a.rows[i]);
    std::memcpy(v_dst, k_src + kv_row, static_cast<size_t>(kv_row) * sizeof(T));
  }
}

template <typename T>
void tokens_baseline(const Args<T>& a, int64_t begin, int64_t end) {
  tokens_body(a, begin, end);
}

#ifdef ROPE_HAS_AVX2_CLONE
template <typename T>
ROPE_AVX2 void tokens_avx2(const Args<T>& a, int64_t begin, int64_t end) {
  tokens_body(a, begin, end);
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

template <typename T>
void run(const Args<T>& a) {
  auto tokens = &tokens_baseline<T>;
#ifdef ROPE_HAS_AVX2_CLONE
  if (cpu_has_avx2()) tokens = &tokens_avx2<T>;
#endif
  const int64_t width = std::max<int64_t>(1, rope_qkv_width(a.s));
  const int64_t grain = std::max(kMinTokensPerTask, kElementsPerTask / width);
  at::parallel_for(0, a.s.num_tokens, grain,
                   [&](int64_t begin, int64_t end) { tokens(a, begin, end); });
}

template <typename T>
void run_typed(const void* qkv, const void* cos, const void* sin, void* kv_cache,
               int64_t layer, const int64_t* req, const int64_t* rows, void* q_out,
               const RopeShape& shape) {
  run(Args<T>{static_cast<const T*>(qkv), static_cast<const T*>(cos),
              static_cast<const T*>(sin), static_cast<T*>(kv_cache), layer, req, rows,
              static_cast<T*>(q_out), shape});
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
    run_typed<float>(qkv, cos, sin, kv_cache, layer, req, rows, q_out, shape);
  } else {
    run_typed<uint16_t>(qkv, cos, sin, kv_cache, layer, req, rows, q_out, shape);
  }
}

}  // namespace adaeagle::cpu
