// linear on AVX2 + FMA + F16C, compiled per function (target attribute) so the rest of the
// build keeps portable flags; picked at run time by cpu/linear.cpp.
//
// One output element keeps one 8-lane accumulator (the order of linear.h). A tile of MT input
// rows x NT output rows loads each x group once for the NT outputs and dequantises each weight
// group once for the MT rows; tiles change only which independent accumulators advance side by
// side, never the arithmetic of one element.
//
// Zen 3 runs two 4-cycle FMAs per cycle, so a tile needs 8+ independent accumulators. The best
// fp32 tile is 3 x 4 (12 accumulators, 3 x + 1 weight register, 7 loads per 12 FMAs); where the
// weights are decoded in registers (F16, BF16, quantised) 4 x 2 decodes less per FMA.
#include "cpu/linear.h"

#include <c10/util/Exception.h>

#include <cstring>
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
// Output rows handed to panel(): a multiple of every tile width; kRowsPerTask (linear.cpp) is
// a multiple of it, so a thread's rows are whole panels except at the end of N.
constexpr int kPanel = 8;

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
// bytes 0-7, 8-15; groups 2, 3 their high nibbles (a zero-extended byte shifted right by 4 is
// its high nibble, no mask needed).
ADAEAGLE_AVX2_INLINE __m256i q4_group(const uint8_t* qs, int j) {
  const __m256i v = _mm256_cvtepu8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * (j & 1))));
  return j >= 2 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(0x0f));
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
    // d and m are adjacent halves: one 32-bit broadcast, one conversion, two lane shuffles.
    uint32_t dm_bits;
    std::memcpy(&dm_bits, blk, sizeof(dm_bits));
    const __m256 dm = _mm256_cvtph_ps(_mm_set1_epi32(static_cast<int>(dm_bits)));
    d = _mm256_permute_ps(dm, _MM_SHUFFLE(0, 0, 0, 0));
    m = _mm256_permute_ps(dm, _MM_SHUFFLE(1, 1, 1, 1));
    q = blk + 4;
  }
  ADAEAGLE_AVX2_INLINE __m256 group(int j) const {
    // d * q is exact in fp32 (4 x 11 significant bits), so one rounding of d * q + m,
    // fused or not, gives gguf's value.
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(q4_group(q, j)), d, m);
  }
};

// ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), the order of linear.h.
ADAEAGLE_AVX2_INLINE float hsum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// hsum of v0 .. v3 at once: [hsum(v0), hsum(v1), hsum(v2), hsum(v3)], each with the same
// additions, operands in the same order.
ADAEAGLE_AVX2_INLINE __m128 hsum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  // [v0 | v1], [v2 | v3]: lane l of each half holds a_l + a_{l+4}
  const __m256 s01 = _mm256_add_ps(_mm256_permute2f128_ps(v0, v1, 0x20),
                                   _mm256_permute2f128_ps(v0, v1, 0x31));
  const __m256 s23 = _mm256_add_ps(_mm256_permute2f128_ps(v2, v3, 0x20),
                                   _mm256_permute2f128_ps(v2, v3, 0x31));
  // [s[0] + s[2], s[1] + s[3]] of v0, v2 in the low half, of v1, v3 in the high half
  const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm256_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
  // [h0, h2, h0, h2 | h1, h3, h1, h3]
  const __m256 t = _mm256_add_ps(_mm256_shuffle_ps(r, r, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(r, r, _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm_unpacklo_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
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
  uintptr_t pf_step = 0;
  if (prefetch) pf_step = (NT * static_cast<uintptr_t>(src.row_bytes) + chunks - 1) / chunks;
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
  constexpr int kOut = MT * NT;
  alignas(16) float sums[(kOut + 3) / 4 * 4];
  for (int i = 0; i + 4 <= kOut; i += 4) {
    _mm_store_ps(sums + i, hsum4(acc[i / NT][i % NT], acc[(i + 1) / NT][(i + 1) % NT],
                                 acc[(i + 2) / NT][(i + 2) % NT], acc[(i + 3) / NT][(i + 3) % NT]));
  }
  for (int i = kOut / 4 * 4; i < kOut; ++i) sums[i] = hsum(acc[i / NT][i % NT]);
  for (int m = 0; m < MT; ++m) {
    for (int n = 0; n < NT; ++n) store_output(a, m0 + m, n0 + n, sums[m * NT + n]);
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
// would decode in registers), prefetching the same rows two panels ahead.
template <int Type>
ADAEAGLE_AVX2 void dequantize_rows(const LinearArgs& a, int64_t n0, int count, float* dst) {
  const int64_t chunks = a.k / kChunk;
  for (int r = 0; r < count; ++r) {
    const uint8_t* row = a.w + (n0 + r) * a.row_bytes;
    float* out = dst + r * a.k;
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(row) + 2 * kPanel * a.row_bytes;
    for (uintptr_t line = ahead & ~uintptr_t{63}; line < ahead + a.row_bytes; line += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T1);
    }
    for (int64_t c = 0; c < chunks; ++c) {
      Chunk<Type> w;
      w.load(row, c);
      for (int j = 0; j < kChunk / 8; ++j) _mm256_storeu_ps(out + c * kChunk + 8 * j, w.group(j));
    }
    for (int64_t k = chunks * kChunk; k < a.k; ++k) out[k] = gguf_weight(Type, row, k);
  }
}

// Outputs [0, M) x [n0, n0 + kPanel): MT input rows at a time against NT weight rows at a
// time, so the MT x rows stay in L1 while the panel's rows (in L1/L2 after the first pass) go
// by. The last M % MT rows take a wider tile (1 x 8, 2 x 4, 3 x 4; narrower where the weights'
// scales would not fit the registers), so that it still advances several accumulators side by
// side.
template <int Type, int MT, int NT>
ADAEAGLE_AVX2 void panel_rows(const LinearArgs& a, const RowSource& src, int64_t m0, int64_t n0) {
  for (int p = 0; p < kPanel; p += NT) {
    tile<Type, MT, NT>(a, RowSource{src.first + p * src.row_bytes, src.row_bytes, src.prefetch},
                       m0, n0 + p);
  }
}

template <int Type>
constexpr bool kDecoded = Type != kGgmlF32;
// Tile widths for one and two rows: each weight row of a tile keeps its block's scales in
// registers (Q4_1: d and m, Q4_0 / Q8_0: d), so wide tiles of these types spill. Measured at
// M = 1 / 2 over the default model's layer shapes (weights from DRAM): Q4_1 1 x 2 and 2 x 2
// run 20% / 17% faster than 1 x 8 and 2 x 4, Q4_0 2 x 2 7% faster than 2 x 4, Q8_0 1 x 4 6%
// faster than 1 x 8 (its 2 x 4 stays best).
template <int Type>
constexpr int kOneRowTile = Type == kGgmlQ4_1 ? 2 : Type == kGgmlQ4_0 || Type == kGgmlQ8_0 ? 4 : 8;
template <int Type>
constexpr int kTwoRowTile = Type == kGgmlQ4_1 || Type == kGgmlQ4_0 ? 2 : 4;

template <int Type, int MT, int NT>
ADAEAGLE_AVX2 void panel(const LinearArgs& a, const RowSource& src, int64_t n0) {
  static_assert(MT <= 4 && kPanel % NT == 0, "panel: remainders below assume MT <= 4");
  int64_t m0 = 0;
  for (; m0 + MT <= a.m; m0 += MT) panel_rows<Type, MT, NT>(a, src, m0, n0);
  switch (a.m - m0) {
    case 3: panel_rows<Type, 3, kDecoded<Type> ? 2 : 4>(a, src, m0, n0); break;
    case 2: panel_rows<Type, 2, kTwoRowTile<Type>>(a, src, m0, n0); break;
    case 1: panel_rows<Type, 1, kOneRowTile<Type>>(a, src, m0, n0); break;
    default: break;
  }
}

// Output rows [n0, n_end), fewer than a panel: pairs, then one.
template <int Type>
ADAEAGLE_AVX2 void panel_tail(const LinearArgs& a, const RowSource& src, int64_t n0,
                              int64_t n_end) {
  for (int64_t n = n0; n < n_end;) {
    const RowSource at{src.first + (n - n0) * src.row_bytes, src.row_bytes, src.prefetch};
    if (n + 2 <= n_end) {
      all_rows<Type, 2>(a, at, n);
      n += 2;
    } else {
      all_rows<Type, 1>(a, at, n);
      n += 1;
    }
  }
}

// Output rows [n_begin, n_end) for all MT (= M) rows, one weight row at a time: each weight
// group is decoded once for all rows, MT accumulators side by side.
constexpr int64_t kTallTileRows = 8;

template <int Type, int MT>
ADAEAGLE_AVX2 void tall_rows(const LinearArgs& a, const RowSource& src, int64_t n_begin,
                             int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    tile<Type, MT, 1>(a, RowSource{src.first + (n - n_begin) * src.row_bytes, src.row_bytes,
                                   src.prefetch}, 0, n);
  }
}

// From this many rows on, each panel of quantised weight rows is dequantised once into an
// fp32 copy (then run by the 3 x 4 fp32 tile) instead of being decoded once per row tile.
constexpr int64_t kDequantOnceRows = 5;
// F16 / BF16 decode in two cheap instructions: their copy only pays with many rows and while
// the panel's copy (kPanel x K fp32) stays in L1.
constexpr int64_t kPlainCopyRows = 16;
constexpr int64_t kPlainCopyMaxK = 768;

// Tile shape by M (measured on Zen 3, weights from DRAM): up to 4 rows one row tile (1 x 8,
// 2 x 4, 3 x 4 (3 x 2 where weights are decoded), 4 x 2; narrower for one or two rows of
// quantised weights, see kOneRowTile); quantised
// weights with 5 to 8 rows one M x 1 tile (each group decoded once for all rows: a verify
// pass of 5 to 8 tokens costs 13% less than with the copy), from 9 rows on the dequantised
// copy; from 5 rows on fp32 weights (or their copy) take 3 x 4 tiles and the other types 4 x 2.
template <int Type>
ADAEAGLE_AVX2 void rows_of_type(const LinearArgs& a, int64_t n_begin, int64_t n_end) {
  constexpr bool quantised = Type == kGgmlQ4_0 || Type == kGgmlQ4_1 || Type == kGgmlQ8_0;
  const bool copy_rows = quantised ? a.m >= kDequantOnceRows
                                   : Type != kGgmlF32 && a.m >= kPlainCopyRows &&
                                         a.k <= kPlainCopyMaxK;
  int64_t n0 = n_begin;
  if (quantised && a.m >= kDequantOnceRows && a.m <= kTallTileRows) {
    const RowSource src{a.w + n0 * a.row_bytes, a.row_bytes, true};
    switch (a.m) {
      case 5: return tall_rows<Type, 5>(a, src, n_begin, n_end);
      case 6: return tall_rows<Type, 6>(a, src, n_begin, n_end);
      case 7: return tall_rows<Type, 7>(a, src, n_begin, n_end);
      default: return tall_rows<Type, 8>(a, src, n_begin, n_end);
    }
  }
  if (!copy_rows) {
    for (; n0 + kPanel <= n_end; n0 += kPanel) {
      const RowSource src{a.w + n0 * a.row_bytes, a.row_bytes, true};
      if (Type == kGgmlF32 && a.m > 4) {
        panel<Type, 3, 4>(a, src, n0);
      } else {
        panel<Type, 4, 2>(a, src, n0);
      }
    }
    panel_tail<Type>(a, RowSource{a.w + n0 * a.row_bytes, a.row_bytes, true}, n0, n_end);
    return;
  }
  thread_local std::vector<float> scratch;  // this worker's, reused: no allocation per call
  scratch.resize(static_cast<size_t>(kPanel * a.k));
  const RowSource copy{reinterpret_cast<const uint8_t*>(scratch.data()), 4 * a.k, false};
  for (; n0 < n_end; n0 += kPanel) {
    const int count = static_cast<int>(n_end - n0 < kPanel ? n_end - n0 : kPanel);
    dequantize_rows<Type>(a, n0, count, scratch.data());
    if (count == kPanel) {
      panel<kGgmlF32, 3, 4>(a, copy, n0);
    } else {
      panel_tail<kGgmlF32>(a, copy, n0, n0 + count);
    }
  }
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
