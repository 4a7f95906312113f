// linear with 8-bit activations on AVX2 (linear_q8.h), compiled per function (target
// attribute) like linear_avx2.cpp.
//
// A tile is 8 output rows (one fp32 accumulator lane each) x MT input rows. Per weight block,
// the 8 rows' blocks are decoded once; for every input row each block dot product takes
// maddubs (u8 x s8 -> pairs in int16) and madd (pairs -> int32), the 8 rows' partial sums are
// reduced to one int32 vector (exact, so in any order), converted and scaled into the 8
// accumulators with one fma.
// - Q4_0 / Q4_1: rows i and i + 4 share a register (one 128-bit half each), so each nibble
//   mask, shift and multiply-add serves two rows and three horizontal adds finish the block.
// - Q8_0: one register per row and a horizontal reduction per input row; from 8 input rows
//   the tile regroups the decoded block once instead and needs no horizontal reduction.
// The integer dot products are exact and the float steps after them the same whichever way,
// so are the bits. Weight rows are read from DRAM by the first row tile and from L1 / L2 by
// the others.
#include "cpu/linear_q8.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "adaeagle/gguf_blocks.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ADAEAGLE_AVX2 __attribute__((target("avx2,fma,f16c")))
#define ADAEAGLE_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

namespace adaeagle::cpu {
namespace {

constexpr int kTileRows = 8;  // output rows per tile: the 8 fp32 lanes
constexpr int kPrefetchTiles = 2;

ADAEAGLE_AVX2_INLINE float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

ADAEAGLE_AVX2_INLINE int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)));
}

// Lane n = the sum of the 8 int32 lanes of p[n].
ADAEAGLE_AVX2_INLINE __m256i reduce8(const __m256i* p) {
  const __m256i t0 = _mm256_hadd_epi32(p[0], p[1]), t1 = _mm256_hadd_epi32(p[2], p[3]);
  const __m256i t2 = _mm256_hadd_epi32(p[4], p[5]), t3 = _mm256_hadd_epi32(p[6], p[7]);
  const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
  return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                          _mm256_permute2x128_si256(u0, u1, 0x31));
}

// The 16 nibble bytes of two Q4 blocks (one per 128-bit half) -> their weights 0..15 (lo)
// and 16..31 (hi) as unsigned bytes, each half holding its own block's.
ADAEAGLE_AVX2_INLINE void q4_pair(const uint8_t* qs_a, const uint8_t* qs_b, __m256i* lo,
                                  __m256i* hi) {
  const __m256i q = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs_a))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs_b)), 1);
  const __m256i mask = _mm256_set1_epi8(0x0f);
  *lo = _mm256_and_si256(q, mask);
  *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
}

// The first 4 bytes of the blocks at blk + n * row_bytes, n = 0..7, as the dwords of one
// register (8 scalar loads: vpgatherdd cost more on Zen 3).
ADAEAGLE_AVX2_INLINE __m256i block_heads(const uint8_t* blk, int64_t row_bytes) {
  __m128i pairs[4];
  for (int i = 0; i < 4; ++i) {
    int32_t a, b;
    std::memcpy(&a, blk + 2 * i * row_bytes, sizeof a);
    std::memcpy(&b, blk + (2 * i + 1) * row_bytes, sizeof b);
    pairs[i] = _mm_unpacklo_epi32(_mm_cvtsi32_si128(a), _mm_cvtsi32_si128(b));
  }
  return _mm256_set_m128i(_mm_unpacklo_epi64(pairs[2], pairs[3]),
                          _mm_unpacklo_epi64(pairs[0], pairs[1]));
}

// The fp16 words at byte 0 (lo) and 2 (hi) of 8 block heads (block_heads), as fp32.
ADAEAGLE_AVX2_INLINE void head_f16_pair(__m256i g, __m256* lo, __m256* hi) {
  const __m256i words = _mm256_packus_epi32(_mm256_and_si256(g, _mm256_set1_epi32(0xffff)),
                                            _mm256_srli_epi32(g, 16));
  const __m256i ordered = _mm256_permute4x64_epi64(words, 0xd8);
  *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(ordered));
  *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(ordered, 1));
}

// The hardware prefetchers lose track of 8 short interleaved row streams, so the first row
// tile (m0 = 0) walks the weights kPrefetchTiles tiles ahead linearly, a share of the lines
// per block (prefetches never fault).
struct AheadPrefetch {
  bool on;
  uintptr_t begin, step;

  AheadPrefetch(const LinearQ8Args& a, int64_t m0, const uint8_t* first)
      : on(m0 == 0 && a.act.blocks > 0),
        begin(reinterpret_cast<uintptr_t>(first) +
              kPrefetchTiles * kTileRows * static_cast<uintptr_t>(a.out.row_bytes)),
        step((kTileRows * static_cast<uintptr_t>(a.out.row_bytes) + a.act.blocks - 1) /
             (a.act.blocks > 0 ? a.act.blocks : 1)) {}

  ADAEAGLE_AVX2_INLINE void block(int64_t b) const {
    if (!on) return;
    const uintptr_t lo = begin + b * step, hi = lo + step;
    for (uintptr_t line = lo & ~uintptr_t{63}; line < hi; line += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T1);
    }
  }
};

// dword j of g[i] = dword i of w[j]: an 8 x 8 transpose of 32-bit elements.
ADAEAGLE_AVX2_INLINE void transpose8_epi32(const __m256i* w, __m256i* g) {
  __m256i t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_epi32(w[i], w[i + 1]);
    t[i + 1] = _mm256_unpackhi_epi32(w[i], w[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    g[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
    g[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
  }
}

// Lane n = the exact integer dot product of Q8_0 weight block w[n] (8 output rows) with one
// input row's quantised block xq, by 8 maddubs and a horizontal reduction. |w| times (x with
// w's sign) keeps maddubs' first operand unsigned; pairs of int8 products need int32 from the
// first addition on.
ADAEAGLE_AVX2_INLINE __m256i dot_reduced(const __m256i* w, const int8_t* xq) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
  __m256i p[kTileRows];
  for (int n = 0; n < kTileRows; ++n) {
    p[n] = _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_sign_epi8(w[n], w[n]), _mm256_sign_epi8(x, w[n])),
        _mm256_set1_epi16(1));
  }
  return reduce8(p);
}

// The same for Q8_0 from the regrouped blocks g (group i: weights 4i..4i+3 of each output
// row) and their magnitudes g_abs, by 8 broadcasts of 4 activations and no horizontal
// reduction; each group is widened to int32 on its own.
ADAEAGLE_AVX2_INLINE __m256i dot_grouped(const __m256i* g, const __m256i* g_abs,
                                         const int8_t* xq) {
  const int32_t* x4 = reinterpret_cast<const int32_t*>(xq);
  __m256i dot = _mm256_setzero_si256();
  for (int i = 0; i < 8; ++i) {
    const __m256i x = _mm256_sign_epi8(_mm256_set1_epi32(x4[i]), g[i]);
    dot = _mm256_add_epi32(
        dot, _mm256_madd_epi16(_mm256_maddubs_epi16(g_abs[i], x), _mm256_set1_epi16(1)));
  }
  return dot;
}

// Lane n = the exact integer dot product of Q4 weight block n (8 output rows, decoded by
// q4_pair: pair i holds rows i and i + 4) with one input row's quantised block xq. A pair's
// int16 lanes stay below 2 * 2 * 15 * 127 before the madd.
ADAEAGLE_AVX2_INLINE __m256i dot_paired(const __m256i* lo, const __m256i* hi,
                                        const int8_t* xq) {
  const __m256i x_lo = _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(xq)));
  const __m256i x_hi = _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16)));
  __m256i s[4];
  for (int i = 0; i < 4; ++i) {
    s[i] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo[i], x_lo),
                                              _mm256_maddubs_epi16(hi[i], x_hi)),
                             _mm256_set1_epi16(1));
  }
  // (rows 0 1 0 1 | 4 5 4 5) and (2 3 2 3 | 6 7 6 7) partial sums, then rows 0..7 in order
  return _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
}

// The 8 output rows' blocks at blk, decoded once for all input rows of a tile: Q4 types by
// q4_pair, Q8_0 as loaded or, with kGrouped, regrouped (and their magnitudes).
template <int Type, bool kGrouped>
struct DecodedBlocks {
  static constexpr int kPayload = Type == kGgmlQ4_1 ? 4 : 2;
  __m256i w[kTileRows], w_abs[kTileRows];  // Q4: w[i] / w[i + 4] = lo / hi of pair i

  ADAEAGLE_AVX2_INLINE DecodedBlocks(const uint8_t* blk, int64_t row_bytes) {
    if constexpr (Type == kGgmlQ8_0) {
      __m256i raw[kTileRows];
      for (int n = 0; n < kTileRows; ++n) {
        raw[n] = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(blk + n * row_bytes + kPayload));
      }
      if constexpr (kGrouped) {
        transpose8_epi32(raw, w);
        for (int i = 0; i < kTileRows; ++i) w_abs[i] = _mm256_sign_epi8(w[i], w[i]);
      } else {
        for (int n = 0; n < kTileRows; ++n) w[n] = raw[n];
      }
    } else {
      for (int i = 0; i < 4; ++i) {
        q4_pair(blk + i * row_bytes + kPayload, blk + (i + 4) * row_bytes + kPayload, &w[i],
                &w[i + 4]);
      }
    }
  }

  ADAEAGLE_AVX2_INLINE __m256i dot(const int8_t* xq) const {
    if constexpr (Type != kGgmlQ8_0) {
      return dot_paired(w, w + 4, xq);
    } else if constexpr (kGrouped) {
      return dot_grouped(w, w_abs, xq);
    } else {
      return dot_reduced(w, xq);
    }
  }
};

// Outputs [m0, m0 + MT) x [n0, n0 + 8). Q8_0 regroups the decoded blocks from 8 input rows
// on, where that pays for itself.
template <int Type, int MT>
ADAEAGLE_AVX2 void tile(const LinearQ8Args& a, int64_t m0, int64_t n0) {
  constexpr bool kGrouped = Type == kGgmlQ8_0 && MT >= 8;
  constexpr int kBytes = Type == kGgmlQ8_0 ? 34 : Type == kGgmlQ4_1 ? 20 : 18;
  const int64_t row_bytes = a.out.row_bytes;
  const uint8_t* first = a.out.w + n0 * row_bytes;
  __m256 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_ps();
  const AheadPrefetch prefetch(a, m0, first);
  for (int64_t b = 0; b < a.act.blocks; ++b) {
    prefetch.block(b);
    const uint8_t* blk = first + b * kBytes;
    __m256 dw, mw;
    head_f16_pair(block_heads(blk, row_bytes), &dw, &mw);
    const DecodedBlocks<Type, kGrouped> decoded(blk, row_bytes);
    for (int m = 0; m < MT; ++m) {
      const int64_t at = (m0 + m) * a.act.blocks + b;
      __m256i dot = decoded.dot(a.act.q + at * 32);
      if (Type == kGgmlQ4_0) dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * a.act.sum[at]));
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.act.d[at]));
      acc[m] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[m]);
      if (Type == kGgmlQ4_1) acc[m] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a.act.s[at]), acc[m]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    alignas(32) float lanes[kTileRows];
    _mm256_store_ps(lanes, acc[m]);
    for (int n = 0; n < kTileRows; ++n) store_output(a.out, m0 + m, n0 + n, lanes[n]);
  }
}

template <int Type>
ADAEAGLE_AVX2 void rows_of_type(const LinearQ8Args& a, int64_t n_begin, int64_t n_end) {
  int64_t n0 = n_begin;
  for (; n0 + kTileRows <= n_end; n0 += kTileRows) {
    // Taller tiles decode each weight block for more input rows.
    int64_t m0 = 0;
    for (; m0 + 16 <= a.out.m; m0 += 16) tile<Type, 16>(a, m0, n0);
    for (; m0 + 8 <= a.out.m; m0 += 8) tile<Type, 8>(a, m0, n0);
    if (m0 + 4 <= a.out.m) {
      tile<Type, 4>(a, m0, n0);
      m0 += 4;
    }
    switch (a.out.m - m0) {
      case 3: tile<Type, 3>(a, m0, n0); break;
      case 2: tile<Type, 2>(a, m0, n0); break;
      case 1: tile<Type, 1>(a, m0, n0); break;
      default: break;
    }
  }
  for (; n0 < n_end; ++n0) {
    for (int64_t m = 0; m < a.out.m; ++m) store_output(a.out, m, n0, dot_q8_scalar(a, m, n0));
  }
}

}  // namespace

ADAEAGLE_AVX2 void quantize_rows_q8_avx2(const float* x, int64_t k, int64_t m_begin,
                                         int64_t m_end, int8_t* q, float* d, int32_t* sum,
                                         float* s) {
  const int64_t blocks = k / kQuantBlock;
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t m = m_begin; m < m_end; ++m) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t at = m * blocks + b;
      const float* xb = x + m * k + b * kQuantBlock;
      __m256 v[4];
      __m256 amax = _mm256_setzero_ps(), probe = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(xb + 8 * i);
        amax = _mm256_max_ps(_mm256_andnot_ps(sign_bit, v[i]), amax);
        probe = _mm256_add_ps(probe, _mm256_mul_ps(v[i], _mm256_setzero_ps()));  // NaN if not finite
      }
      __m256i* qb = reinterpret_cast<__m256i*>(q + m * k + b * kQuantBlock);
      if (_mm256_movemask_ps(_mm256_cmp_ps(probe, probe, _CMP_ORD_Q)) != 0xff) {
        _mm256_storeu_si256(qb, _mm256_setzero_si256());
        d[at] = s[at] = std::numeric_limits<float>::quiet_NaN();
        sum[at] = 0;
        continue;
      }
      const float scale = hmax(amax) / 127.0f;
      const __m256 inv = _mm256_set1_ps(scale != 0.0f ? 1.0f / scale : 0.0f);
      __m256i qi[4];
      for (int i = 0; i < 4; ++i) qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
      const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]),
                                                _mm256_packs_epi32(qi[2], qi[3]));
      _mm256_storeu_si256(qb, _mm256_permutevar8x32_epi32(packed, order));
      const int32_t total = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]),
                                                      _mm256_add_epi32(qi[2], qi[3])));
      d[at] = scale;
      sum[at] = total;
      s[at] = scale * static_cast<float>(total);
    }
  }
}

void linear_q8_rows_avx2(const LinearQ8Args& a, int64_t n_begin, int64_t n_end) {
  switch (a.out.type) {
    case kGgmlQ4_0: return rows_of_type<kGgmlQ4_0>(a, n_begin, n_end);
    case kGgmlQ4_1: return rows_of_type<kGgmlQ4_1>(a, n_begin, n_end);
    case kGgmlQ8_0: return rows_of_type<kGgmlQ8_0>(a, n_begin, n_end);
    default: TORCH_CHECK(false, "linear: act_quant needs Q4_0, Q4_1 or Q8_0 weights, got ",
                         a.out.type);
  }
}

}  // namespace adaeagle::cpu

#else  // not x86: the portable loops only

namespace adaeagle::cpu {
void quantize_rows_q8_avx2(const float* x, int64_t k, int64_t m_begin, int64_t m_end, int8_t* q,
                           float* d, int32_t* sum, float* s) {
  quantize_rows_q8_scalar(x, k, m_begin, m_end, q, d, sum, s);
}
void linear_q8_rows_avx2(const LinearQ8Args& a, int64_t n_begin, int64_t n_end) {
  linear_q8_rows_scalar(a, n_begin, n_end);
}
}  // namespace adaeagle::cpu

#endif
