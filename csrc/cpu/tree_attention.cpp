// tree_attention and merge_attn_states on CPU.
//
// Work is split into tasks (request, kv head, chunk of kChunk keys); tasks run in parallel,
// longest first, and the chunks of one (request, kv head) are merged by their softmax state
// afterwards. A task loads its queries (all tree tokens x the heads of the GQA group) into a
// local fp32 buffer, then walks its keys in blocks of kBlockFor<D>: the block's K rows are
// transposed into fp32 once and scored against every query row (register tiles of 6 rows),
// then each row does an online-softmax update and accumulates the block's V rows. Each K/V row
// is read from the cache once per call. From 24 query rows on, the AVX2 path runs the blocks of
// prefix keys with the rows in the vector lanes instead (lanes_block: no K transpose, no
// horizontal reductions), with the same arithmetic per row.
//
// Logical keys: a row of tree token t sees the prefix rows and its visible tree nodes
// a_0 < a_1 < ... (root-to-node order for a tree). Keys are indexed logically, prefix + k being
// the row prefix + a_k, i.e. where that path would sit if it were decoded as a chain. Chunks,
// blocks and SIMD lanes are placed by logical index: blocks of prefix rows only are shared by
// all query rows; a block reaching into [prefix, prefix + T) is gathered per tree token (its
// ancestors at their logical lanes) and scored for that token's rows alone.
//
// Batch invariance: chunks and blocks start at fixed multiples of the logical key index, masked
// keys contribute exact zeros and empty chunks merge as exact identities, so a row's result
// does not depend on T, B or the thread count: a chain verified in one call matches T
// one-token calls bit for bit, and every node of a tree matches its root-to-node path run as a
// chain.
#include "cpu/tree_attention.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace adaeagle::cpu {
namespace {

constexpr int kChunk = 256;  // keys per task
constexpr int kLanes = 8;
// Keys scored together: the transposed block [D][kBlock] stays within 16 KiB of L1.
template <int D>
constexpr int kBlockFor = D <= 64 ? 64 : 32;
constexpr int kOutSlice = 64;  // output dims accumulated in registers at once

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

// 2^x for x <= 0, ~1 ulp; exactly 1 at 0 and exactly 0 below -126 (so also for -inf).
inline Vec8 exp2_8(Vec8 x) {
  const Vec8 lo = splat8(-126.0f);
  const Vec8 xc = x < lo ? lo : x;
  const Vec8 shifter = splat8(12582912.0f);  // 1.5 * 2^23: x + shifter rounds x to an integer
  const Vec8 r = (xc + shifter) - shifter;
  const Vec8 f = xc - r;  // in [-0.5, 0.5]
  // Taylor series of 2^f = e^(f ln 2) to degree 7 (truncation error < 6e-9).
  Vec8 p = splat8(1.5252733804059840e-05f);
  p = p * f + 1.5403530393381606e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.6181291076284772e-03f;
  p = p * f + 5.5504108664821580e-02f;
  p = p * f + 2.4022650695910071e-01f;
  p = p * f + 6.9314718055994531e-01f;
  p = p * f + 1.0f;
  const Vec8 pow2n = as_vec8((__builtin_convertvector(r, Int8) + 127) << 23);
  const Vec8 res = p * pow2n;
  return x < lo ? Vec8{} : res;
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

template <typename T>
struct Problem {
  const T* q;
  const T* kv;
  T* out;
  float* lse;
  const int32_t* prefix_lens;
  const int32_t* indptr;
  const int64_t* mask_bits;
  TreeAttentionShape shape;
  int64_t layer;
  int64_t group;
  float qscale;  // scale * log2(e)
  int mode;
};

struct Task {
  int32_t b, g;      // request, kv head
  int32_t lo, hi;    // keys (cache rows of the request) [lo, hi)
  int64_t partial;   // offset of the task's partial state in the scratch buffer, -1: none
  int64_t cost;
};

// A (request, kv head) whose keys span several tasks, merged after they all ran.
struct ChunkedHead {
  int64_t first_task, num_tasks;
};

struct Scratch {
  std::vector<float> q, o;
  std::vector<float> qt, ot;          // [D][rows rounded up to 8]: q and o with rows in lanes
  std::vector<SoftmaxState> st;
  std::vector<uint64_t> all_visible;  // per row: every lane of a gathered block is visible
  std::vector<float> ktree, vtree;    // [T][D] the request's tree K and V rows in fp32
  std::vector<int8_t> ancestors;      // [T][kMaxTreeNodes] visible tree nodes in id order
  std::vector<int32_t> num_visible;   // [T] visible tree nodes per token
};

Scratch& thread_scratch() {
  thread_local Scratch s;
  return s;
}

// Register tiles: R query rows x V vectors of keys (scores) or output dims (accumulation),
// R * V <= 12 accumulators plus the operands in the 16 AVX2 registers: 6 x 2 for the bulk of
// the rows, 3 x 4 for a GQA group of 3 (a one-token step of the default model), 2 x 4 and 1 x 4
// for the rest. The tile never changes a row's arithmetic, only how many rows share the loads.
constexpr int kTileRows = 6;
constexpr int kColStep = 32;  // the widest tile's columns: blocks are scored in steps of it
template <int R>
constexpr int kTileVecs = R >= 6 ? 2 : 4;

// sc [R][kBlock] = scores of R query rows q [R][D] against a transposed key block kt [D][kBlock].
template <bool kAvx2, int D, int R>
inline void score_tile(const float* q, const float* kt, int cols, float* sc) {
  constexpr int kBlock = kBlockFor<D>;
  constexpr int V = kTileVecs<R>;
  static_assert(kColStep % (V * kLanes) == 0);
  for (int col = 0; col < cols; col += V * kLanes) {
    Vec8 acc[R][V] = {};
    for (int d = 0; d < D; ++d) {
      Vec8 k[V];
      for (int v = 0; v < V; ++v) k[v] = load8(kt + d * kBlock + col + v * kLanes);
      for (int r = 0; r < R; ++r) {
        const Vec8 x = bcast8<kAvx2>(q + r * D + d);
        for (int v = 0; v < V; ++v) acc[r][v] += x * k[v];
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) store8(sc + r * kBlock + col + v * kLanes, acc[r][v]);
    }
  }
}

struct BlockKeys {
  int start;          // key of lane 0
  int first, last;    // lanes [first, last) hold keys of the task
  bool needs_mask;    // some lane is outside the task or is a tree key
  int prefix_len;
  int cols;           // lanes [0, cols) are scored, a multiple of kColStep >= last; the lanes
                      // past it are masked keys, whose weights would be exact zeros
};


inline int scored_cols(int last, int block) {
  return std::min(block, (last + kColStep - 1) / kColStep * kColStep);
}

// Online-softmax step of one query row over a key block: masks the scores `sc` [cols],
// replaces them by their weights exp2(s - m) (all 0 when no key is visible), updates the state
// and returns the factor for the row's previous output sum.
template <int kBlock>
inline float softmax_block(float* sc, const BlockKeys& blk, uint64_t bits, SoftmaxState* st) {
  const int vecs = blk.cols / kLanes;
  if (blk.needs_mask) {
    for (int c = 0; c < blk.cols; ++c) {
      const bool visible = c >= blk.first && c < blk.last &&
                           attn_key_visible(blk.start + c, blk.prefix_len, bits);
      if (!visible) sc[c] = attn_neg_inf();
    }
  }
  Vec8 mx = load8(sc);
  for (int v = 1; v < vecs; ++v) {
    const Vec8 s = load8(sc + v * kLanes);
    mx = mx > s ? mx : s;
  }
  const float block_max = hmax8(mx);
  if (block_max == attn_neg_inf()) {
    for (int v = 0; v < vecs; ++v) store8(sc + v * kLanes, Vec8{});
    return 1.0f;
  }
  const float alpha = softmax_state_raise(st, block_max);
  const Vec8 m = splat8(st->m);
  Vec8 sum = {};
  for (int v = 0; v < vecs; ++v) {
    const Vec8 w = exp2_8(load8(sc + v * kLanes) - m);
    store8(sc + v * kLanes, w);
    sum += w;
  }
  st->l += hsum8(sum);
  return alpha;
}

// o [R][D] = o * alpha[r] + w [R][kBlock] x V, over the block's lanes [first, last) whose V rows
// are vrows[c] (fp32, or bf16 converted as loaded). Masked keys have weight 0 and add exact
// zeros.
template <bool kAvx2, int D, int R, typename VT>
inline void accumulate_tile(const float* w, const float* alpha, const BlockKeys& blk,
                            const VT* const* vrows, float* o) {
  constexpr int kBlock = kBlockFor<D>;
  constexpr int V = kTileVecs<R>;
  for (int col = 0; col < D; col += V * kLanes) {
    Vec8 acc[R][V];
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) acc[r][v] = load8(o + r * D + col + v * kLanes) * alpha[r];
    }
    for (int c = blk.first; c < blk.last; ++c) {
      // (V == 2 spelled out: the generic loop made GCC spill accumulators of the 6 x 2 tile.)
      if constexpr (V == 2) {
        const Vec8 v0 = load_row8<kAvx2>(vrows[c] + col);
        const Vec8 v1 = load_row8<kAvx2>(vrows[c] + col + kLanes);
        for (int r = 0; r < R; ++r) {
          const Vec8 x = bcast8<kAvx2>(w + r * kBlock + c);
          acc[r][0] += x * v0;
          acc[r][1] += x * v1;
        }
      } else {
        Vec8 vv[V];
        for (int v = 0; v < V; ++v) vv[v] = load_row8<kAvx2>(vrows[c] + col + v * kLanes);
        for (int r = 0; r < R; ++r) {
          const Vec8 x = bcast8<kAvx2>(w + r * kBlock + c);
          for (int v = 0; v < V; ++v) acc[r][v] += x * vv[v];
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) store8(o + r * D + col + v * kLanes, acc[r][v]);
    }
  }
}

// One key block for query rows [row, row + R).
template <bool kAvx2, int D, int R, typename VT>
inline void block_tile(int row, const float* qs, const float* kt, const BlockKeys& blk,
                       const VT* const* vrows, const uint64_t* bits, SoftmaxState* st,
                       float* o) {
  constexpr int kBlock = kBlockFor<D>;
  alignas(32) float sc[R * kBlock];
  float alpha[R];
  if (blk.cols <= 0) return;  // never taken (a block holds a key); lets GCC see sc set
  score_tile<kAvx2, D, R>(qs + row * D, kt, blk.cols, sc);
  for (int r = 0; r < R; ++r) {
    alpha[r] = softmax_block<kBlock>(sc + r * kBlock, blk, bits[row + r], &st[row + r]);
  }
  accumulate_tile<kAvx2, D, R, VT>(sc, alpha, blk, vrows, o + row * D);
}

// A tile as a call of its own on the AVX2 path: inlined into the task loop, GCC kept
// loop-invariant vectors of the surrounding code in registers and spilled the 6 x 2 tile's
// accumulators.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
template <int D, int R, typename VT>
__attribute__((target("avx2,fma"), flatten, noinline)) void block_tile_avx2(
    int row, const float* qs, const float* kt, const BlockKeys& blk, const VT* const* vrows,
    const uint64_t* bits, SoftmaxState* st, float* o) {
  block_tile<true, D, R, VT>(row, qs, kt, blk, vrows, bits, st, o);
}
#endif

template <bool kAvx2, int D, int R, typename VT>
inline void run_tile(int row, const float* qs, const float* kt, const BlockKeys& blk,
                     const VT* const* vrows, const uint64_t* bits, SoftmaxState* st,
                     float* o) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if constexpr (kAvx2) {
    block_tile_avx2<D, R, VT>(row, qs, kt, blk, vrows, bits, st, o);
  } else {
    block_tile<false, D, R, VT>(row, qs, kt, blk, vrows, bits, st, o);
  }
#else
  block_tile<false, D, R, VT>(row, qs, kt, blk, vrows, bits, st, o);
#endif
}

// One key block for query rows [begin, end), in register tiles. Tiles do not change a row's
// arithmetic, only how many rows share the loads.
template <bool kAvx2, int D, typename VT>
inline void block_rows(int begin, int end, const float* qs, const float* kt,
                       const BlockKeys& blk, const VT* const* vrows, const uint64_t* bits,
                       SoftmaxState* st, float* o) {
  int r = begin;
  for (; r + kTileRows <= end; r += kTileRows) {
    run_tile<kAvx2, D, kTileRows, VT>(r, qs, kt, blk, vrows, bits, st, o);
  }
  if (r + 3 <= end) {
    run_tile<kAvx2, D, 3, VT>(r, qs, kt, blk, vrows, bits, st, o);
    r += 3;
  }
  for (; r + 2 <= end; r += 2) run_tile<kAvx2, D, 2, VT>(r, qs, kt, blk, vrows, bits, st, o);
  for (; r < end; ++r) run_tile<kAvx2, D, 1, VT>(r, qs, kt, blk, vrows, bits, st, o);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
constexpr bool kHaveLanes = true;
#else
constexpr bool kHaveLanes = false;
#endif
constexpr int kLanesMinRows = 24;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Query rows in lanes. From kLanesMinRows query rows on, the AVX2 path runs the blocks of
// prefix keys with a task's rows in the vector lanes: queries transposed once per task
// (qt [D][ld]), scores [key][row] with each key broadcast from its row as stored (no K
// transpose), the softmax across registers (no horizontal max or sum per row) and the output
// sum as ot [D][ld]. Each row's arithmetic is that of block_tile: the same FMA chains over d
// and over keys, the same exp2, and the weights summed in softmax_block's lane order, then
// in hsum8's sequence. So a row gets the same bits in either layout (the batch-invariance
// tests compare a row alone, in the 3 x 4 tiles, with the same row in a long call).
constexpr int kLanesTileVecs = 3;                      // row vectors per tile
constexpr int kLanesScStride = kLanesTileVecs * kLanes;  // sc [key][24 rows]

// One block of kBlock prefix keys (fp32 rows krows[c], vrows[c]) for rows [r0, r0 + 8 NV).
template <int D, int NV>
__attribute__((target("avx2,fma"), noinline)) void lanes_tile(
    int r0, int ld, const float* qt, const float* const* krows, const float* const* vrows,
    SoftmaxState* st, float* ot) {
  constexpr int kBlock = kBlockFor<D>;
  constexpr int kKeys = NV == 1 ? 8 : 4;  // keys (scores) or dims (output) per register tile
  alignas(32) float sc[kBlock * kLanesScStride];
  for (int c0 = 0; c0 < kBlock; c0 += kKeys) {
    Vec8 acc[NV][kKeys] = {};
    for (int d = 0; d < D; ++d) {
      Vec8 q[NV];
      for (int i = 0; i < NV; ++i) q[i] = load8(qt + d * ld + r0 + i * kLanes);
      for (int j = 0; j < kKeys; ++j) {
        const Vec8 k = bcast8<true>(krows[c0 + j] + d);
        for (int i = 0; i < NV; ++i) acc[i][j] += q[i] * k;
      }
    }
    for (int j = 0; j < kKeys; ++j) {
      for (int i = 0; i < NV; ++i) store8(sc + (c0 + j) * kLanesScStride + i * kLanes, acc[i][j]);
    }
  }
  Vec8 alpha[NV];
  for (int i = 0; i < NV; ++i) {
    Vec8 mx = load8(sc + i * kLanes);
    for (int c = 1; c < kBlock; ++c) {
      const Vec8 s = load8(sc + c * kLanesScStride + i * kLanes);
      mx = mx > s ? mx : s;
    }
    // softmax_block per lane: the state update in scalar code, a row without a visible key
    // (max -inf) keeps its state and gets zero weights
    alignas(32) float m[kLanes], a[kLanes];
    Int8 dead = {};
    for (int lane = 0; lane < kLanes; ++lane) {
      SoftmaxState* row = &st[r0 + i * kLanes + lane];
      if (mx[lane] == attn_neg_inf()) {
        dead[lane] = -1;
        a[lane] = 1.0f;
        m[lane] = 0.0f;
      } else {
        a[lane] = softmax_state_raise(row, mx[lane]);
        m[lane] = row->m;
      }
    }
    alpha[i] = load8(a);
    const Vec8 mv = load8(m);
    Vec8 part[kLanes] = {};  // part[j]: keys j, j + 8, ... in order, as softmax_block's lane j
    const bool any_dead = !_mm256_testz_si256(reinterpret_cast<__m256i>(dead),
                                              reinterpret_cast<__m256i>(dead));
    for (int c0 = 0; c0 < kBlock; c0 += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        float* s = sc + (c0 + j) * kLanesScStride + i * kLanes;
        Vec8 w = exp2_8(load8(s) - mv);
        if (any_dead) w = dead ? Vec8{} : w;
        store8(s, w);
        part[j] += w;
      }
    }
    Vec8 sum = part[0];
    for (int j = 1; j < kLanes; ++j) sum += part[j];
    for (int lane = 0; lane < kLanes; ++lane) {
      if (!dead[lane]) st[r0 + i * kLanes + lane].l += sum[lane];
    }
  }
  for (int d0 = 0; d0 < D; d0 += kKeys) {
    Vec8 acc[NV][kKeys];
    for (int j = 0; j < kKeys; ++j) {
      for (int i = 0; i < NV; ++i) {
        acc[i][j] = load8(ot + (d0 + j) * ld + r0 + i * kLanes) * alpha[i];
      }
    }
    for (int c = 0; c < kBlock; ++c) {
      Vec8 w[NV];
      for (int i = 0; i < NV; ++i) w[i] = load8(sc + c * kLanesScStride + i * kLanes);
      for (int j = 0; j < kKeys; ++j) {
        const Vec8 v = bcast8<true>(vrows[c] + d0 + j);
        for (int i = 0; i < NV; ++i) acc[i][j] += w[i] * v;
      }
    }
    for (int j = 0; j < kKeys; ++j) {
      for (int i = 0; i < NV; ++i) store8(ot + (d0 + j) * ld + r0 + i * kLanes, acc[i][j]);
    }
  }
}

// qt [D][ld] = qs [rows][D] transposed, the rows from `rows` to ld zero.
template <int D>
__attribute__((target("avx2,fma"), noinline)) void lanes_transpose_in(const float* qs, int rows,
                                                                     int ld, float* qt) {
  alignas(32) static const float zeros[D] = {};
  for (int r0 = 0; r0 < ld; r0 += kLanes) {
    const float* src[kLanes];
    for (int i = 0; i < kLanes; ++i) src[i] = r0 + i < rows ? qs + (r0 + i) * D : zeros;
    for (int d0 = 0; d0 < D; d0 += kLanes) {
      Vec8 t[kLanes];
      load_transposed8<true>(src, d0, t);
      for (int j = 0; j < kLanes; ++j) store8(qt + (d0 + j) * ld + r0, t[j]);
    }
  }
}

// o [rows][D] = ot [D][ld] transposed (the padding rows dropped).
template <int D>
__attribute__((target("avx2,fma"), noinline)) void lanes_transpose_out(const float* ot, int rows,
                                                                      int ld, float* o) {
  for (int d0 = 0; d0 < D; d0 += kLanes) {
    const float* src[kLanes];
    for (int i = 0; i < kLanes; ++i) src[i] = ot + (d0 + i) * ld;
    for (int r0 = 0; r0 < ld; r0 += kLanes) {
      Vec8 t[kLanes];
      load_transposed8<true>(src, r0, t);
      for (int j = 0; j < kLanes && r0 + j < rows; ++j) store8(o + (r0 + j) * D + d0, t[j]);
    }
  }
}

// One block of prefix keys for all ld rows (a multiple of 8).
template <int D>
void lanes_block(int ld, const float* qt, const float* const* krows, const float* const* vrows,
                 SoftmaxState* st, float* ot) {
  int r0 = 0;
  for (; r0 + kLanesScStride <= ld; r0 += kLanesScStride) {
    lanes_tile<D, 3>(r0, ld, qt, krows, vrows, st, ot);
  }
  if (ld - r0 == 2 * kLanes) lanes_tile<D, 2>(r0, ld, qt, krows, vrows, st, ot);
  if (ld - r0 == kLanes) lanes_tile<D, 1>(r0, ld, qt, krows, vrows, st, ot);
}
#endif

// Writes row r (tree token r / group, head g * group + r % group) of request b from its output
// sum o [dim] and softmax state.
template <typename T>
void write_row(const Problem<T>& p, int b, int g, int r, int dim, const float* o,
               SoftmaxState st) {
  const int64_t t = p.indptr[b] + r / p.group;
  const int64_t idx = t * p.shape.heads + g * p.group + r % p.group;
  const float f = softmax_state_out_scale(st);
  T* dst = p.out + idx * dim;
  for (int d = 0; d < dim; ++d) dst[d] = from_float<T>(o[d] * f);
  if (p.lse != nullptr) p.lse[idx] = softmax_state_lse(st);
}

template <bool kAvx2, typename T, int D>
inline void run_task(const Problem<T>& p, const Task& task, float* partials) {
  const TreeAttentionShape& sh = p.shape;
  const int64_t start = p.indptr[task.b];
  const int tree = static_cast<int>(p.indptr[task.b + 1] - start);
  const int prefix = p.prefix_lens[task.b];
  const int group = static_cast<int>(p.group);
  const int rows = tree * group;

  Scratch& s = thread_scratch();
  if (s.q.size() < static_cast<size_t>(rows) * D) {
    s.q.resize(static_cast<size_t>(rows) * D);
    s.o.resize(static_cast<size_t>(rows) * D);
  }
  // rows with their lanes (lanes_block): ld rows, the last up to 7 of them padding
  bool in_lanes = kHaveLanes && kAvx2 && rows >= kLanesMinRows;
  const int ld = (rows + kLanes - 1) / kLanes * kLanes;
  if (s.st.size() < static_cast<size_t>(ld)) {
    s.st.resize(ld);
    s.all_visible.assign(ld, ~uint64_t{0});
  }
  float* qs = s.q.data();
  float* o = s.o.data();
  SoftmaxState* st = s.st.data();
  const uint64_t* all_visible = s.all_visible.data();
  // (qscale in a local: a store through qs could alias p, which kept these loops scalar)
  const float qscale = p.qscale;
  for (int r = 0; r < rows; ++r) {
    const int64_t t = r / group;
    const T* src = p.q + ((start + t) * sh.heads + task.g * group + r % group) * D;
    float* dst = qs + r * D;
    for (int d = 0; d < D; ++d) dst[d] = to_float(src[d]) * qscale;
    st[r] = softmax_state_empty();
  }
  std::memset(o, 0, sizeof(float) * rows * D);
  float* qt = nullptr;
  float* ot = nullptr;
  if (in_lanes) {
    if (s.qt.size() < static_cast<size_t>(ld) * D) {
      s.qt.resize(static_cast<size_t>(ld) * D);
      s.ot.resize(static_cast<size_t>(ld) * D);
    }
    qt = s.qt.data();
    ot = s.ot.data();
    lanes_transpose_in<D>(qs, rows, ld, qt);
    std::memset(ot, 0, sizeof(float) * ld * D);
    for (int r = rows; r < ld; ++r) st[r] = softmax_state_empty();
  }
  // Back to rows in memory (o [rows][D]) for the blocks lanes_block does not take.
  auto leave_lanes = [&] {
    lanes_transpose_out<D>(ot, rows, ld, o);
    in_lanes = false;
  };

  constexpr int kBlock = kBlockFor<D>;
  const int64_t row_stride = sh.hkv * D;
  const T* kbase = p.kv + kv_cache_offset(p.layer, 0, task.b, 0, task.g, sh.cache_batch,
                                          sh.s_max, sh.hkv, D);
  const T* vbase = p.kv + kv_cache_offset(p.layer, 1, task.b, 0, task.g, sh.cache_batch,
                                          sh.s_max, sh.hkv, D);
  // The tree part, for a task whose (logical) keys reach past the prefix.
  const bool has_tree_keys = task.hi > prefix;
  float* ktree = nullptr;
  float* vtree = nullptr;
  int8_t* anc = nullptr;
  int32_t* num_visible = nullptr;
  if (has_tree_keys) {
    if (s.ktree.size() < static_cast<size_t>(tree) * D) {
      s.ktree.resize(static_cast<size_t>(tree) * D);
      s.vtree.resize(static_cast<size_t>(tree) * D);
    }
    if (s.num_visible.size() < static_cast<size_t>(tree)) {
      s.ancestors.resize(static_cast<size_t>(tree) * kMaxTreeNodes);
      s.num_visible.resize(tree);
    }
    ktree = s.ktree.data();
    vtree = s.vtree.data();
    anc = s.ancestors.data();
    num_visible = s.num_visible.data();
    for (int j = 0; j < tree; ++j) {
      const T* krow = kbase + static_cast<int64_t>(prefix + j) * row_stride;
      const T* vrow = vbase + static_cast<int64_t>(prefix + j) * row_stride;
      convert_row<kAvx2, T, D>(krow, ktree + j * D);
      convert_row<kAvx2, T, D>(vrow, vtree + j * D);
    }
    const uint64_t tree_bits = tree >= 64 ? ~uint64_t{0} : (uint64_t{1} << tree) - 1;
    for (int t = 0; t < tree; ++t) {
      uint64_t bits = i64_to_bits(p.mask_bits[start + t]) & tree_bits;
      int n = 0;
      for (; bits != 0; bits &= bits - 1) {
        anc[t * kMaxTreeNodes + n++] = static_cast<int8_t>(__builtin_ctzll(bits));
      }
      num_visible[t] = n;
    }
  }
  // Lanes outside the task keep whatever they held (zeros, or keys of an earlier block): their
  // scores are masked to -inf.
  alignas(32) float kt[D * kBlock];
  std::memset(kt, 0, sizeof kt);
  alignas(32) float vconv[kBlock * D];
  const float* vrows[kBlock];
  // bf16 V rows of prefix-only blocks are read from the cache and converted as loaded when the
  // rows fit one register tile; more tiles would convert them once each.
  constexpr bool kDirectType = std::is_same_v<T, c10::BFloat16>;
  const bool direct_v = kDirectType && rows <= kTileRows;
  const T* vrows_direct[kBlock];
  for (int bs = task.lo - task.lo % kBlock; bs < task.hi; bs += kBlock) {
    // The next block's K/V rows, strided by the other heads' rows, are fetched while this one
    // is computed (a decode step finds them in DRAM or L3, not L2).
    const int next_end = std::min(bs + 2 * kBlock, std::min(task.hi, prefix));
    for (int j = bs + kBlock; j < next_end; ++j) {
      const char* krow = reinterpret_cast<const char*>(kbase + int64_t{j} * row_stride);
      const char* vrow = reinterpret_cast<const char*>(vbase + int64_t{j} * row_stride);
      for (int byte = 0; byte < static_cast<int>(D * sizeof(T)); byte += 64) {
        __builtin_prefetch(krow + byte);
        __builtin_prefetch(vrow + byte);
      }
    }
    BlockKeys blk;
    blk.start = bs;
    blk.first = std::max(task.lo - bs, 0);
    blk.last = std::min(task.hi - bs, kBlock);
    blk.prefix_len = prefix;
    blk.needs_mask = blk.first > 0 || blk.last < kBlock;
    blk.cols = scored_cols(blk.last, kBlock);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (in_lanes) {
      if (!blk.needs_mask && bs + kBlock <= prefix) {
        const float* krows[kBlock];
        for (int c = 0; c < kBlock; ++c) {
          const T* krow = kbase + static_cast<int64_t>(bs + c) * row_stride;
          const T* vrow = vbase + static_cast<int64_t>(bs + c) * row_stride;
          if constexpr (std::is_same_v<T, float>) {
            krows[c] = krow;
            vrows[c] = vrow;
          } else {
            convert_row<kAvx2, T, D>(krow, kt + c * D);
            convert_row<kAvx2, T, D>(vrow, vconv + c * D);
            krows[c] = kt + c * D;
            vrows[c] = vconv + c * D;
          }
        }
        lanes_block<D>(ld, qt, krows, vrows, st, ot);
        continue;
      }
      leave_lanes();
    }
#endif
    // The task's prefix keys, lanes [key_lo, key_hi): K transposed into kt (8 lanes at once
    // where all 8 are keys), V rows pointed at or converted. Tree lanes are filled per token.
    const int key_lo = blk.first, key_hi = std::min(blk.last, prefix - bs);
    const bool prefix_only = bs + blk.last <= prefix;
    for (int c0 = 0; c0 < kBlock; c0 += kLanes) {
      const bool whole = c0 >= key_lo && c0 + kLanes <= key_hi;
      if (whole) {
        const T* krows[kLanes];
        for (int i = 0; i < kLanes; ++i) {
          krows[i] = kbase + static_cast<int64_t>(bs + c0 + i) * row_stride;
        }
        transpose_rows8<kAvx2, T, D>(krows, kt + c0, kBlock);
      }
      for (int c = c0; c < c0 + kLanes; ++c) {
        if (c < key_lo || c >= key_hi) {
          vrows[c] = nullptr;
          vrows_direct[c] = nullptr;
          continue;
        }
        if (!whole) {
          const T* krow = kbase + static_cast<int64_t>(bs + c) * row_stride;
          for (int d = 0; d < D; ++d) kt[d * kBlock + c] = to_float(krow[d]);
        }
        const T* vrow = vbase + static_cast<int64_t>(bs + c) * row_stride;
        if constexpr (std::is_same_v<T, float>) {
          vrows[c] = vrow;
        } else {
          if (direct_v && prefix_only) {
            vrows_direct[c] = vrow;
            continue;
          }
          convert_row<kAvx2, T, D>(vrow, vconv + c * D);
          vrows[c] = vconv + c * D;
        }
      }
    }
    if (prefix_only) {  // shared by every row
      if constexpr (kDirectType) {
        if (direct_v) {
          block_rows<kAvx2, D, T>(0, rows, qs, kt, blk, vrows_direct, all_visible, st, o);
          continue;
        }
      }
      block_rows<kAvx2, D, float>(0, rows, qs, kt, blk, vrows, all_visible, st, o);
      continue;
    }
    // Lanes from tree_lane on hold logical tree keys: gathered per token from its ancestors;
    // lanes past the token's last visible node keep stale keys and are masked.
    const int tree_lane = std::max(prefix - bs, blk.first);
    for (int t = 0; t < tree; ++t) {
      BlockKeys tb = blk;
      tb.last = std::min(blk.last, prefix + num_visible[t] - bs);
      if (tb.last <= tb.first) continue;  // no key of this token in the block
      tb.needs_mask = tb.first > 0 || tb.last < kBlock;
      tb.cols = scored_cols(tb.last, kBlock);
      const int8_t* path = anc + t * kMaxTreeNodes;  // lane c holds node path[bs + c - prefix]
      auto lane_node = [&](int c) { return path[bs + c - prefix]; };
      for (int c = tree_lane; c < tb.last;) {
        if (c % kLanes == 0 && c + kLanes <= tb.last) {  // 8 lanes: one register transpose
          const float* krows[kLanes];
          for (int i = 0; i < kLanes; ++i) {
            krows[i] = ktree + lane_node(c + i) * D;
            vrows[c + i] = vtree + lane_node(c + i) * D;
          }
          transpose_rows8<kAvx2, float, D>(krows, kt + c, kBlock);
          c += kLanes;
          continue;
        }
        const float* krow = ktree + lane_node(c) * D;
        for (int d = 0; d < D; ++d) kt[d * kBlock + c] = krow[d];
        vrows[c] = vtree + lane_node(c) * D;
        ++c;
      }
      block_rows<kAvx2, D, float>(t * group, (t + 1) * group, qs, kt, tb, vrows, all_visible, st,
                                  o);
    }
  }

  if (in_lanes) leave_lanes();
  if (task.partial < 0) {
    for (int r = 0; r < rows; ++r) write_row(p, task.b, task.g, r, D, o + r * D, st[r]);
    return;
  }
  float* part = partials + task.partial;
  for (int r = 0; r < rows; ++r) {
    std::memcpy(part + r * (D + 2), o + r * D, sizeof(float) * D);
    part[r * (D + 2) + D] = st[r].m;
    part[r * (D + 2) + D + 1] = st[r].l;
  }
}

template <typename T, int D>
__attribute__((flatten)) void run_task_generic(const Problem<T>& p, const Task& task,
                                               float* partials) {
  run_task<false, T, D>(p, task, partials);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
template <typename T, int D>
__attribute__((target("avx2,fma"), flatten)) void run_task_avx2(const Problem<T>& p,
                                                                const Task& task,
                                                                float* partials) {
  run_task<true, T, D>(p, task, partials);
}

// ADAEAGLE_NO_AVX2=1 (read once) forces the portable path, so tests can run it here too.
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          std::getenv("ADAEAGLE_NO_AVX2") == nullptr;
  return has;
}
#endif

template <typename T, int D>
auto pick_task_fn() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (cpu_has_avx2()) return &run_task_avx2<T, D>;
#endif
  return &run_task_generic<T, D>;
}

// Merges the partial states of a chunked (request, kv head) in chunk order and writes it.
template <typename T>
void merge_chunks(const Problem<T>& p, const Task* tasks, const ChunkedHead& head,
                  const float* partials) {
  const Task& first = tasks[head.first_task];
  const int64_t dim = p.shape.dim;
  const int rows = static_cast<int>((p.indptr[first.b + 1] - p.indptr[first.b]) * p.group);
  std::vector<float> acc(dim);
  for (int r = 0; r < rows; ++r) {
    const float* part = partials + first.partial + r * (dim + 2);
    SoftmaxState st{part[dim], part[dim + 1]};
    std::copy(part, part + dim, acc.begin());
    for (int64_t c = 1; c < head.num_tasks; ++c) {
      part = partials + tasks[head.first_task + c].partial + r * (dim + 2);
      float fa = 0.0f, fb = 0.0f;
      softmax_state_merge(&st, SoftmaxState{part[dim], part[dim + 1]}, &fa, &fb);
      for (int64_t d = 0; d < dim; ++d) acc[d] = acc[d] * fa + part[d] * fb;
    }
    write_row(p, first.b, first.g, r, static_cast<int>(dim), acc.data(), st);
  }
}

template <typename T>
void run(const Problem<T>& p) {
  const TreeAttentionShape& sh = p.shape;
  std::vector<Task> tasks;
  std::vector<ChunkedHead> chunked;
  int64_t partial_size = 0;
  for (int32_t b = 0; b < sh.batch; ++b) {
    const int tree = p.indptr[b + 1] - p.indptr[b];
    if (tree == 0) continue;
    const int rows = tree * static_cast<int>(p.group);
    int lo = 0, hi = 0;
    attn_key_range(p.mode, p.prefix_lens[b], tree, &lo, &hi);
    for (int32_t g = 0; g < sh.hkv; ++g) {
      const int64_t first = static_cast<int64_t>(tasks.size());
      for (int c = lo - lo % kChunk; c < hi; c += kChunk) {
        const int clo = std::max(c, lo), chi = std::min(c + kChunk, hi);
        tasks.push_back({b, g, clo, chi, -1, int64_t{chi - clo + 32} * rows});
      }
      if (hi <= lo) tasks.push_back({b, g, lo, lo, -1, rows});
      const int64_t count = static_cast<int64_t>(tasks.size()) - first;
      if (count > 1) {
        chunked.push_back({first, count});
        for (int64_t i = first; i < first + count; ++i) {
          tasks[i].partial = partial_size;
          partial_size += rows * (sh.dim + 2);
        }
      }
    }
  }
  if (tasks.empty()) return;

  thread_local std::vector<float> partials;
  if (partials.size() < static_cast<size_t>(partial_size)) partials.resize(partial_size);
  float* part = partials.data();
  auto task_fn = sh.dim == 64 ? pick_task_fn<T, 64>() : pick_task_fn<T, 128>();

  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), num_tasks);
  if (threads <= 1) {
    for (const Task& task : tasks) task_fn(p, task, part);
  } else {
    // Longest tasks first, handed out one at a time to whichever thread is free.
    std::vector<int64_t> order(num_tasks);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return tasks[a].cost > tasks[b].cost; });
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      for (int64_t i = next.fetch_add(1); i < num_tasks; i = next.fetch_add(1)) {
        task_fn(p, tasks[order[i]], part);
      }
    });
  }
  if (chunked.empty()) return;
  at::parallel_for(0, static_cast<int64_t>(chunked.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) merge_chunks(p, tasks.data(), chunked[i], part);
  });
}

void check_batch(const TreeAttentionShape& sh, const int32_t* prefix_lens,
                 const int32_t* tree_indptr) {
  TORCH_CHECK(tree_indptr[0] == 0, "tree_attention: tree_indptr[0] must be 0, got ",
              tree_indptr[0]);
  TORCH_CHECK(tree_indptr[sh.batch] == sh.num_nodes, "tree_attention: tree_indptr[-1] must ",
              "equal q.size(0)=", sh.num_nodes, ", got ", tree_indptr[sh.batch]);
  for (int64_t b = 0; b < sh.batch; ++b) {
    const int64_t tree = int64_t{tree_indptr[b + 1]} - tree_indptr[b];
    TORCH_CHECK(tree >= 0, "tree_attention: tree_indptr must be non-decreasing, got ",
                "tree_indptr[", b + 1, "]=", tree_indptr[b + 1], " < ", tree_indptr[b]);
    TORCH_CHECK(tree <= kMaxTreeNodes, "tree_attention: request ", b, " has ", tree,
                " tree tokens, at most ", kMaxTreeNodes, " allowed");
    TORCH_CHECK(prefix_lens[b] >= 0, "tree_attention: prefix_lens[", b, "]=", prefix_lens[b],
                " must be >= 0");
    TORCH_CHECK(prefix_lens[b] + tree <= sh.s_max, "tree_attention: request ", b,
                ": prefix_lens + tree tokens = ", prefix_lens[b], " + ", tree,
                " exceeds the cache length S_max=", sh.s_max);
  }
}

template <typename T>
void merge_states(const T* out_a, const float* lse_a, const T* out_b, const float* lse_b,
                  int64_t rows, int64_t dim, T* out, float* lse) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float wa = 0.0f, wb = 0.0f;
      const float merged = lse_merge_weights(lse_a[r], lse_b[r], &wa, &wb);
      const T* a = out_a + r * dim;
      const T* b = out_b + r * dim;
      T* dst = out + r * dim;
      // Element d is read before it is written, so out may alias out_a or out_b.
      if (wa != 0.0f && wb != 0.0f) {
        for (int64_t d = 0; d < dim; ++d) {
          dst[d] = from_float<T>(wa * to_float(a[d]) + wb * to_float(b[d]));
        }
      } else if (wa != 0.0f) {
        for (int64_t d = 0; d < dim; ++d) dst[d] = from_float<T>(wa * to_float(a[d]));
      } else if (wb != 0.0f) {
        for (int64_t d = 0; d < dim; ++d) dst[d] = from_float<T>(wb * to_float(b[d]));
      } else {
        for (int64_t d = 0; d < dim; ++d) dst[d] = from_float<T>(0.0f);
      }
      lse[r] = merged;
    }
  });
}

}  // namespace

void tree_attention(const void* q, const void* kv_cache, AttnDtype dtype,
                    const TreeAttentionShape& shape, int64_t layer, const int32_t* prefix_lens,
                    const int32_t* tree_indptr, const int64_t* mask_bits, float scale,
                    int mode, void* out, float* lse) {
  TORCH_CHECK(shape.dim == 64 || shape.dim == 128, "tree_attention: head dim must be 64 or ",
              "128, got ", shape.dim);
  check_batch(shape, prefix_lens, tree_indptr);
  auto go = [&](auto tag) {
    using T = decltype(tag);
    Problem<T> p{static_cast<const T*>(q), static_cast<const T*>(kv_cache),
                 static_cast<T*>(out), lse, prefix_lens, tree_indptr, mask_bits, shape, layer,
                 shape.heads / shape.hkv, scale * kLog2e, mode};
    run(p);
  };
  switch (dtype) {
    case kAttnF32: go(float{}); break;
    case kAttnBF16: go(c10::BFloat16{}); break;
    case kAttnF16: go(c10::Half{}); break;
  }
}

void merge_attn_states(const void* out_a, const float* lse_a, const void* out_b,
                       const float* lse_b, AttnDtype dtype, int64_t rows, int64_t dim, void* out,
                       float* lse) {
  auto go = [&](auto tag) {
    using T = decltype(tag);
    merge_states(static_cast<const T*>(out_a), lse_a, static_cast<const T*>(out_b), lse_b, rows,
                 dim, static_cast<T*>(out), lse);
  };
  switch (dtype) {
    case kAttnF32: go(float{}); break;
    case kAttnBF16: go(c10::BFloat16{}); break;
    case kAttnF16: go(c10::Half{}); break;
  }
}

}  // namespace adaeagle::cpu
