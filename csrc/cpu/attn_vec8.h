// 8-lane fp32 vectors for the CPU attention kernel (tree_attention.cpp): loads and stores,
// broadcasts, horizontal sums, exp2, the softmax state steps of 8 rows, bf16 conversion and
// 8 x 8 register transposes. GCC vector
// types, so the portable path compiles the same code; the AVX2 path adds intrinsics where GCC's
// own lowering costs more.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "adaeagle/tree_attention.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#pragma GCC diagnostic ignored "-Wpsabi"

namespace adaeagle::cpu::attn {

constexpr int kLanes = 8;

typedef float Vec8 __attribute__((vector_size(32)));
typedef int32_t Int8 __attribute__((vector_size(32)));

inline Vec8 load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, Vec8 v) {
  std::memcpy(p, &v, sizeof v);
}
// The fp32 values whose bits are v.
inline Vec8 as_vec8(Int8 v) {
  Vec8 f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline Vec8 splat8(float x) {
  return Vec8{x, x, x, x, x, x, x, x};
}
// Broadcast of *p. On the AVX2 path an explicit vbroadcastss from memory: left to itself GCC
// assembles splats with shuffles, which cost more than the FMAs they feed.
template <bool kAvx2>
inline Vec8 bcast8(const float* p) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if constexpr (kAvx2) {
    Vec8 v;
    asm("vbroadcastss %1, %0" : "=x"(v) : "m"(*p));
    return v;
  }
#endif
  return splat8(*p);
}

inline float hsum8(Vec8 v) {
  float s = v[0];
  for (int i = 1; i < kLanes; ++i) s += v[i];
  return s;
}
inline float hmax8(Vec8 v) {
  float s = v[0];
  for (int i = 1; i < kLanes; ++i) s = s > v[i] ? s : v[i];
  return s;
}

// 2^x for x <= 0, < 1 ulp; exactly 1 at 0 and exactly 0 below -126 (so also for -inf).
inline Vec8 exp2_8(Vec8 x) {
  const Vec8 lo = splat8(-126.0f);
  const Vec8 xc = x < lo ? lo : x;
  const Vec8 shifter = splat8(12582912.0f);  // 1.5 * 2^23: x + shifter rounds x to an integer
  const Vec8 r = (xc + shifter) - shifter;
  const Vec8 f = xc - r;  // in [-0.5, 0.5]
  // Minimax polynomial for 2^f of degree 6 (relative error < 2e-9).
  Vec8 p = splat8(1.5353361959569156e-04f);
  p = p * f + 1.3398875016719103e-03f;
  p = p * f + 9.6184369176626205e-03f;
  p = p * f + 5.5503323674201965e-02f;
  p = p * f + 2.4022647738456726e-01f;
  p = p * f + 6.9314718246459961e-01f;
  p = p * f + 1.0f;
  const Vec8 pow2n = as_vec8((__builtin_convertvector(r, Int8) + 127) << 23);
  const Vec8 res = p * pow2n;
  return x < lo ? Vec8{} : res;
}

// softmax_state_raise for 8 rows (running max m, sum l) with exp2_8 instead of the scalar exp2:
// raises m to cover a block whose largest scores are block_max, rescales l and returns the
// factor for the output sums (exactly 1 where m does not move, so also where block_max is -inf).
// A row alone takes it on splats, so it gets the same bits as in a vector of 8.
inline Vec8 raise_states8(Vec8* m, Vec8* l, Vec8 block_max) {
  const Vec8 m_new = *m > block_max ? *m : block_max;
  const Vec8 alpha = *m == m_new ? splat8(1.0f) : exp2_8(*m - m_new);
  *m = m_new;
  *l = *l * alpha;
  return alpha;
}

// acc * fa + part * fb, lane by lane. tree_attention's two partial layouts merge through it,
// so a row merges to the same bits in either.
template <bool kAvx2>
inline Vec8 merge8(Vec8 acc, Vec8 fa, Vec8 part, Vec8 fb);

template <>
inline Vec8 merge8<false>(Vec8 acc, Vec8 fa, Vec8 part, Vec8 fb) {
  return acc * fa + part * fb;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
template <>
__attribute__((target("avx2,fma"))) inline Vec8 merge8<true>(Vec8 acc, Vec8 fa, Vec8 part,
                                                             Vec8 fb) {
  return _mm256_fmadd_ps(acc, fa, part * fb);
}
#else
template <>
inline Vec8 merge8<true>(Vec8 acc, Vec8 fa, Vec8 part, Vec8 fb) {
  return merge8<false>(acc, fa, part, fb);
}
#endif

// Merges state b into state a over disjoint keys, 8 rows at a time (their m and l), and gives
// the factors of the output sums (merged = fa * a + fb * b). Merging with an empty state leaves
// the other unchanged (factors exactly 1 and 0); two empty states stay empty. A row alone takes
// it on splats: the same bits as in a vector of 8.
template <bool kAvx2>
inline void merge_states8(Vec8* am, Vec8* al, Vec8 bm, Vec8 bl, Vec8* fa, Vec8* fb) {
  const Vec8 m = *am > bm ? *am : bm;
  const Int8 empty = m == splat8(attn_neg_inf());
  const Vec8 one = splat8(1.0f);
  // (both empty: am - m is NaN, but am == m selects 1 before the empty rows get 0)
  const Vec8 a = *am == m ? one : exp2_8(*am - m);
  const Vec8 b = bm == m ? one : exp2_8(bm - m);
  *fa = empty ? Vec8{} : a;
  *fb = empty ? Vec8{} : b;
  *al = merge8<kAvx2>(*al, *fa, bl, *fb);
  *am = m;
}

template <typename T>
inline float to_float(T x) {
  return static_cast<float>(x);
}
template <typename T>
inline T from_float(float x) {
  return static_cast<T>(x);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// 8 bf16 values at p in fp32: a zero-extending load and a shift (the generic conversion below
// assembles the 8 from two 128-bit halves, 5 instructions).
__attribute__((target("avx2,fma"))) inline Vec8 load_bf16x8_avx2(const c10::BFloat16* p) {
  const __m256i bits =
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return reinterpret_cast<Vec8>(_mm256_slli_epi32(bits, 16));
}
#endif

// 8 consecutive elements of a K or V row in fp32.
template <bool kAvx2, typename T>
inline Vec8 load_row8(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return load8(p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if constexpr (kAvx2) return load_bf16x8_avx2(p);
#endif
    typedef uint16_t U16x8 __attribute__((vector_size(16)));
    U16x8 h;
    std::memcpy(&h, p, sizeof h);
    return as_vec8(__builtin_convertvector(h, Int8) << 16);
  } else {
    Vec8 v;
    for (int i = 0; i < kLanes; ++i) v[i] = to_float(p[i]);
    return v;
  }
}

// dst[0..D) = row[0..D) in fp32.
template <bool kAvx2, typename T, int D>
inline void convert_row(const T* row, float* dst) {
  for (int d = 0; d < D; d += kLanes) store8(dst + d, load_row8<kAvx2>(row + d));
}

// out[j][i] = r[i][j] for an 8 x 8 block of 32-bit lanes (unpack, shuffle, 128-bit swap);
// exact copies of the bits.
inline void transpose8x8(Vec8* r, Vec8* out) {
  Vec8 t[kLanes];
  for (int i = 0; i < kLanes; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], Int8{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], Int8{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int i = 0; i < kLanes; i += 4) {
    for (int j = 0; j < 2; ++j) {
      r[i + j] = __builtin_shuffle(t[i + j], t[i + j + 2], Int8{0, 1, 8, 9, 4, 5, 12, 13});
      r[i + j + 2] = __builtin_shuffle(t[i + j], t[i + j + 2], Int8{2, 3, 10, 11, 6, 7, 14, 15});
    }
  }
  // r[s] (rows 0-3) and r[s + 4] (rows 4-7) now hold lanes j and j + 4 in their 128-bit
  // halves, s = 0, 2, 1, 3 for j = 0..3.
  for (int j = 0; j < 4; ++j) {
    const int src = j == 0 ? 0 : j == 1 ? 2 : j == 2 ? 1 : 3;
    out[j] = __builtin_shuffle(r[src], r[src + 4], Int8{0, 1, 2, 3, 8, 9, 10, 11});
    out[j + 4] = __builtin_shuffle(r[src], r[src + 4], Int8{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// out[j][i] = rows[i][off + j], i, j < 8, for rows of 32-bit lanes: each register is loaded
// as two 128-bit halves (rows i and i + 4), so only in-lane shuffles remain (16 instead of 24).
__attribute__((target("avx2,fma"))) inline void load_transposed8_avx2(const float* const* rows,
                                                                     int off, Vec8* out) {
  __m256 a[kLanes];
  for (int i = 0; i < 4; ++i) {
    for (int h = 0; h < 2; ++h) {  // dims off + 4h .. off + 4h + 3
      a[4 * h + i] = _mm256_insertf128_ps(
          _mm256_castps128_ps256(_mm_loadu_ps(rows[i] + off + 4 * h)),
          _mm_loadu_ps(rows[i + 4] + off + 4 * h), 1);
    }
  }
  for (int h = 0; h < 2; ++h) {
    const __m256* b = a + 4 * h;
    const __m256 t0 = _mm256_unpacklo_ps(b[0], b[1]), t1 = _mm256_unpackhi_ps(b[0], b[1]);
    const __m256 t2 = _mm256_unpacklo_ps(b[2], b[3]), t3 = _mm256_unpackhi_ps(b[2], b[3]);
    out[4 * h] = _mm256_shuffle_ps(t0, t2, 0x44);
    out[4 * h + 1] = _mm256_shuffle_ps(t0, t2, 0xee);
    out[4 * h + 2] = _mm256_shuffle_ps(t1, t3, 0x44);
    out[4 * h + 3] = _mm256_shuffle_ps(t1, t3, 0xee);
  }
}
#endif

// out[j][i] = rows[i][off + j] for 8 rows of 32-bit lanes.
template <bool kAvx2>
inline void load_transposed8(const float* const* rows, int off, Vec8* out) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if constexpr (kAvx2) {
    load_transposed8_avx2(rows, off, out);
    return;
  }
#endif
  Vec8 r[kLanes];
  for (int i = 0; i < kLanes; ++i) r[i] = load8(rows[i] + off);
  transpose8x8(r, out);
}

// kt[d * ld + i] = rows[i][d] in fp32 for 8 rows and d < D, by register transposes. A bf16
// row is transposed as 32-bit pairs of elements (d, d + 1), 16 dims per transpose, and each
// pair then split into its two fp32 values (a shift and a mask): half the shuffles of
// converting first.
constexpr int32_t kHigh = static_cast<int32_t>(0xffff0000u);
constexpr Int8 kHighHalves = {kHigh, kHigh, kHigh, kHigh, kHigh, kHigh, kHigh, kHigh};

template <bool kAvx2, typename T, int D>
inline void transpose_rows8(const T* const* rows, float* kt, int ld) {
  Vec8 out[kLanes];
  if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, float>) {
    const float* rows32[kLanes];  // a bf16 row as 32-bit pairs
    for (int i = 0; i < kLanes; ++i) rows32[i] = reinterpret_cast<const float*>(rows[i]);
    constexpr int kDimsPerLane = std::is_same_v<T, float> ? 1 : 2;
    for (int d0 = 0; d0 < D; d0 += kDimsPerLane * kLanes) {
      load_transposed8<kAvx2>(rows32, d0 / kDimsPerLane, out);
      for (int j = 0; j < kLanes; ++j) {
        if constexpr (kDimsPerLane == 1) {
          store8(kt + (d0 + j) * ld, out[j]);
        } else {
          Int8 pair;
          std::memcpy(&pair, &out[j], sizeof pair);
          store8(kt + (d0 + 2 * j) * ld, as_vec8(pair << 16));
          store8(kt + (d0 + 2 * j + 1) * ld, as_vec8(pair & kHighHalves));
        }
      }
    }
  } else {
    Vec8 r[kLanes];
    for (int d0 = 0; d0 < D; d0 += kLanes) {
      for (int i = 0; i < kLanes; ++i) r[i] = load_row8<kAvx2>(rows[i] + d0);
      transpose8x8(r, out);
      for (int j = 0; j < kLanes; ++j) store8(kt + (d0 + j) * ld, out[j]);
    }
  }
}

}  // namespace adaeagle::cpu::attn
