// linear on AVX2 + FMA + F16C, compiled per function (target attribute) so the rest of the
// build keeps portable flags; picked at run time by cpu/linear.cpp.
//
// One output element keeps one 8-lane accumulator (the order of linear.h). A tile of MT input
// rows x NT output rows loads each x group once for the NT outputs and dequantises each weight
// group once for the MT rows; tiles change only which independent accumulators advance side by
// side, never the arithmetic of one element.
#include "cpu/linear.h"

#include <c10/util/Exception.h>

#include <vector>

#include "adaeagle/gguf_blocks.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ADAEAGLE_AVX2 __attribute__((target("avx2,fma,f16c")))
#define ADAEAGLE_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

namespace adaeagle::cpu {

bool cpu_has_avx2_fma_f16c() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

namespace {

constexpr int kChunk = 32;  // weights per step: one quant block, or 32 plain weights
constexpr int kPrefetchTiles = 2;

ADAEAGLE_AVX2_INLINE __m256 load_f16_scalar(const uint8_t* p) {
  return _mm256_set1_ps(_cvtsh_ss(load_u16(p)));
}

ADAEAGLE_AVX2_INLINE __m256 low_bytes_to_f32(const uint8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Decoders: load(row, c) reads chunk c of a row (its scales), group(j) gives weights
// 8j .. 8j+7 of the chunk in fp32, bit-identical to gguf.quants.dequantize.
template <int Type>
struct Chunk;

template <>
struct Chunk<kGgmlF32> {
  const float* p;
  ADAEAGLE_AVX2_INLINE void load(const uint8_t* row, int64_t c) {
    p = reinterpret_cast<const float*>(row) + c * kChunk;
  }
  ADAEAGLE_AVX2_INLINE __m256 group(int j) const { return _mm256_loadu_ps(p + 8 * j); }
};

template <>
struct Chunk<kGgmlF16> {
  const uint8_t* p;
  ADAEAGLE_AVX2_INLINE void load(const uint8_t* row, int64_t c) { p = row + c * kChunk * 2; }
  ADAEAGLE_AVX2_INLINE __m256 group(int j) const {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * j)));
  }
};

template <>
struct Chunk<kGgmlBF16> {
  const uint8_t* p;
  ADAEAGLE_AVX2_INLINE void load(const uint8_t* row, int64_t c) { p = row + c * kChunk * 2; }
  ADAEAGLE_AVX2_INLINE __m256 group(int j) const {
    const __m256i h = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * j)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
};

template <>
struct Chunk<kGgmlQ8_0> {
  const uint8_t* q;
  __m256 d;
  ADAEAGLE_AVX2_INLINE void load(const uint8_t* row, int64_t c) {
    const uint8_t* blk = row + c * 34;
    d = load_f16_scalar(blk);
    q = blk + 2;
  }
  ADAEAGLE_AVX2_INLINE __m256 group(int j) const {
    const __m256i v = _mm256_cvtepi8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * j)));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(v), d);
  }
};

// Nibbles of group j of a 16-byte Q4 payload as int32: groups 0, 1 are the low nibbles of
// bytes 0-7, 8-15; groups 2, 3 their high nibbles.
ADAEAGLE_AVX2_INLINE __m256i q4_group(const uint8_t* qs, int j) {
  __m256i v = _mm256_cvtepu8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * (j & 1))));
  if (j >= 2) v = _mm256_srli_epi32(v, 4);
  return _mm256_and_si256(v, _mm256_set1_epi32(0x0f));
}

template <>
struct Chunk<kGgmlQ4_0> {
  const uint8_t* q;
  __m256 d;
  ADAEAGLE_AVX2_INLINE void load(const uint8_t* row, int64_t c) {
    const uint8_t* blk = row + c * 18;
    d = load_f16_scalar(blk);
    q = blk + 2;
  }
  ADAEAGLE_AVX2_INLINE __m256 group(int j) const {
    const __m256i v = _mm256_sub_epi32(q4_group(q, j), _mm256_set1_epi32(8));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(v), d);
  }
};

template <>
struct Chunk<kGgmlQ4_1> {
  const uint8_t* q;
  __m256 d, m;
  ADAEAGLE_AVX2_INLINE void load(const uint8_t* row, int64_t c) {
    const uint8_t* blk = row + c * 20;
    d = load_f16_scalar(blk);
    m = load_f16_scalar(blk + 2);
    q = blk + 4;
  }
  ADAEAGLE_AVX2_INLINE __m256 group(int j) const {
    // d * q is exact in fp32 (4 x 11 significant bits), so one rounding of d * q + m,
    // fused or not, gives gguf's value.
    return _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q4_group(q, j)), d), m);
  }
};

// ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), the order of linear.h.
ADAEAGLE_AVX2_INLINE float hsum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// Where a tile reads its NT weight rows: the packed rows themselves, or their dequantised
// copy (as F32 rows, bit-identical values).
struct RowSource {
  const uint8_t* first;  // weight row of output n0
  int64_t row_bytes;
  bool prefetch;         // walk the rows kPrefetchTiles tiles ahead
};

// Outputs [m0, m0 + MT) x [n0, n0 + NT).
template <int Type, int MT, int NT>
ADAEAGLE_AVX2 void tile(const LinearArgs& a, const RowSource& src, int64_t m0, int64_t n0) {
  __m256 acc[MT][NT];
  const uint8_t* rows[NT];
  const float* xs[MT];
  for (int n = 0; n < NT; ++n) rows[n] = src.first + n * src.row_bytes;
  for (int m = 0; m < MT; ++m) {
    xs[m] = a.x + (m0 + m) * a.k;
    for (int n = 0; n < NT; ++n) acc[m][n] = _mm256_setzero_ps();
  }
  const int64_t chunks = a.k / kChunk;
  // The hardware prefetchers lose track of NT short interleaved row streams, so the first
  // row tile walks the weights kPrefetchTiles tiles ahead linearly (prefetches never fault).
  const bool prefetch = src.prefetch && m0 == 0 && chunks > 0;
  const uintptr_t pf_begin = reinterpret_cast<uintptr_t>(rows[0]) +
                             kPrefetchTiles * NT * static_cast<uintptr_t>(src.row_bytes);
  const uintptr_t pf_step = (NT * static_cast<uintptr_t>(src.row_bytes) + chunks - 1) /
                            (chunks > 0 ? chunks : 1);
  for (int64_t c = 0; c < chunks; ++c) {
    if (prefetch) {
      const uintptr_t lo = pf_begin + c * pf_step, hi = lo + pf_step;
      for (uintptr_t line = lo & ~uintptr_t{63}; line < hi; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T1);
      }
    }
    Chunk<Type> w[NT];
    for (int n = 0; n < NT; ++n) w[n].load(rows[n], c);
    for (int j = 0; j < kChunk / 8; ++j) {
      __m256 xv[MT];
      for (int m = 0; m < MT; ++m) xv[m] = _mm256_loadu_ps(xs[m] + c * kChunk + 8 * j);
      for (int n = 0; n < NT; ++n) {
        const __m256 wv = w[n].group(j);
        for (int m = 0; m < MT; ++m) acc[m][n] = _mm256_fmadd_ps(wv, xv[m], acc[m][n]);
      }
    }
  }
  // Plain types only (quant types have K % 32 == 0): the last K % 32 weights, 8 at a time,
  // the last group zero-padded.
  for (int64_t k0 = chunks * kChunk; k0 < a.k; k0 += 8) {
    const int len = static_cast<int>(a.k - k0 < 8 ? a.k - k0 : 8);
    __m256 xv[MT];
    for (int m = 0; m < MT; ++m) {
      alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int i = 0; i < len; ++i) buf[i] = xs[m][k0 + i];
      xv[m] = _mm256_load_ps(buf);
    }
    for (int n = 0; n < NT; ++n) {
      alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int i = 0; i < len; ++i) buf[i] = gguf_weight(Type, rows[n], k0 + i);
      const __m256 wv = _mm256_load_ps(buf);
      for (int m = 0; m < MT; ++m) acc[m][n] = _mm256_fmadd_ps(wv, xv[m], acc[m][n]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    for (int n = 0; n < NT; ++n) store_output(a, m0 + m, n0 + n, hsum(acc[m][n]));
  }
}

// NT output rows starting at n0, for all M rows: 4 rows at a time, then the rest.
template <int Type, int NT>
ADAEAGLE_AVX2 void all_rows(const LinearArgs& a, const RowSource& src, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + 4 <= a.m; m0 += 4) tile<Type, 4, NT>(a, src, m0, n0);
  switch (a.m - m0) {
    case 3: tile<Type, 3, NT>(a, src, m0, n0); break;
    case 2: tile<Type, 2, NT>(a, src, m0, n0); break;
    case 1: tile<Type, 1, NT>(a, src, m0, n0); break;
    default: break;
  }
}

// Dequantises weight rows [n0, n0 + count) into dst [count, K] fp32 (the values the tiles
// would decode in registers).
template <int Type>
ADAEAGLE_AVX2 void dequantize_rows(const LinearArgs& a, int64_t n0, int count, float* dst) {
  const int64_t chunks = a.k / kChunk;
  for (int r = 0; r < count; ++r) {
    const uint8_t* row = a.w + (n0 + r) * a.row_bytes;
    float* out = dst + r * a.k;
    for (int64_t c = 0; c < chunks; ++c) {
      Chunk<Type> w;
      w.load(row, c);
      for (int j = 0; j < kChunk / 8; ++j) _mm256_storeu_ps(out + c * kChunk + 8 * j, w.group(j));
    }
    for (int64_t k = chunks * kChunk; k < a.k; ++k) out[k] = gguf_weight(Type, row, k);
  }
}

// From this many rows on, each pair of quantised weight rows is dequantised once into an
// L1-resident fp32 copy instead of once per 4-row tile.
constexpr int64_t kDequantOnceRows = 8;

// Tile shape by M: wide in N when there are few rows (more independent accumulators and x
// reuse), tall in M otherwise (weight groups decoded once for 4 rows, or once for all rows).
template <int Type>
ADAEAGLE_AVX2 void rows_of_type(const LinearArgs& a, int64_t n_begin, int64_t n_end) {
  int64_t n0 = n_begin;
  auto direct = [&](int64_t n) {
    return RowSource{a.w + n * a.row_bytes, a.row_bytes, true};
  };
  if (a.m == 1) {
    for (; n0 + 8 <= n_end; n0 += 8) tile<Type, 1, 8>(a, direct(n0), 0, n0);
  } else if (a.m == 2) {
    for (; n0 + 4 <= n_end; n0 += 4) tile<Type, 2, 4>(a, direct(n0), 0, n0);
  } else if (a.m == 3) {
    for (; n0 + 4 <= n_end; n0 += 4) tile<Type, 3, 4>(a, direct(n0), 0, n0);
  } else if (Type == kGgmlF32 || Type == kGgmlF16 || Type == kGgmlBF16 ||
             a.m < kDequantOnceRows) {
    for (; n0 + 2 <= n_end; n0 += 2) all_rows<Type, 2>(a, direct(n0), n0);
  } else {
    std::vector<float> scratch(static_cast<size_t>(2 * a.k));
    const RowSource copy{reinterpret_cast<const uint8_t*>(scratch.data()), 4 * a.k, false};
    for (; n0 < n_end; n0 += 2) {
      const int count = n0 + 2 <= n_end ? 2 : 1;
      dequantize_rows<Type>(a, n0, count, scratch.data());
      if (count == 2) {
        all_rows<kGgmlF32, 2>(a, copy, n0);
      } else {
        all_rows<kGgmlF32, 1>(a, copy, n0);
      }
    }
    return;
  }
  for (; n0 < n_end; ++n0) all_rows<Type, 1>(a, direct(n0), n0);
}

}  // namespace

void linear_rows_avx2(const LinearArgs& a, int64_t n_begin, int64_t n_end) {
  switch (a.type) {
    case kGgmlF32: return rows_of_type<kGgmlF32>(a, n_begin, n_end);
    case kGgmlF16: return rows_of_type<kGgmlF16>(a, n_begin, n_end);
    case kGgmlBF16: return rows_of_type<kGgmlBF16>(a, n_begin, n_end);
    case kGgmlQ4_0: return rows_of_type<kGgmlQ4_0>(a, n_begin, n_end);
    case kGgmlQ4_1: return rows_of_type<kGgmlQ4_1>(a, n_begin, n_end);
    case kGgmlQ8_0: return rows_of_type<kGgmlQ8_0>(a, n_begin, n_end);
    default: TORCH_CHECK(false, "linear: unsupported ggml type ", a.type);
  }
}

}  // namespace adaeagle::cpu

#else  // not x86: the portable loop only

namespace adaeagle::cpu {
bool cpu_has_avx2_fma_f16c() { return false; }
void linear_rows_avx2(const LinearArgs& a, int64_t n_begin, int64_t n_end) {
  linear_rows_scalar(a, n_begin, n_end);
}
}  // namespace adaeagle::cpu

#endif
