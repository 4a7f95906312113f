// tree_attention and merge_attn_states on CPU.
//
// Work is split into tasks (request, kv head, chunk of kChunk keys); tasks run in parallel,
// longest first, and the last chunk of a (request, kv head) to finish merges the chunks'
// partial states in chunk order. A task loads its queries (all tree tokens x the heads of the
// GQA group) into a local fp32 buffer, kept for the thread's next chunk of the same kv head,
// then walks its keys in blocks of kBlockFor<D>: the block's K rows are
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
#include <memory>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/attn_vec8.h"
#include "cpu/tree_attention_lanes.h"

namespace adaeagle::cpu {
namespace {

using namespace attn;  // NOLINT: the kernel's own vector helpers and lanes layout

constexpr int kChunk = 256;  // keys per task
// Keys scored together: the transposed block [D][kBlock] stays within 16 KiB of L1.
template <int D>
constexpr int kBlockFor = D <= 64 ? 64 : 32;

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
  uint64_t call;  // this call's serial number (a task may reuse its thread's queries)
};

struct Task {
  int32_t b, g;      // request, kv head
  int32_t lo, hi;    // keys (cache rows of the request) [lo, hi)
  int64_t partial;   // offset of the task's partial state in the scratch buffer, -1: none
  int64_t cost;
  int32_t head;      // its ChunkedHead, -1: none
};

// A (request, kv head) whose keys span several tasks, merged by the last of them to finish.
// Each task leaves a partial state: with the rows in lanes (rows_in_lanes), the output sums as
// panels [ld * D] (see panel_width), then m [ld] and l [ld]; otherwise [rows][D + 2], each row's
// sums followed by its m and l.
struct ChunkedHead {
  int64_t first_task, num_tasks;
};

struct Scratch {
  std::vector<float> q, o;
  std::vector<float> qt, ot;          // q and o with rows in lanes, in panels (lanes_block)
  uint64_t q_call = 0;                // the (call, request, kv head) whose queries q holds
  int32_t q_b = -1, q_g = -1;
  bool q_panels = false;              // qt holds them too
  std::vector<SoftmaxState> st;
  std::vector<float> merged_m, merged_l;  // merge_head's running states
  std::vector<float> fa, fb;              // merge_head's factors per row
  std::vector<uint64_t> all_visible;  // per row: every lane of a gathered block is visible
  std::vector<float> ktree, vtree;    // [T][D] the request's tree K and V rows in fp32
  std::vector<int8_t> ancestors;      // [T][kMaxTreeNodes] visible tree nodes in id order
  std::vector<int32_t> num_visible;   // [T] visible tree nodes per token
};

Scratch& thread_scratch() {
  thread_local Scratch s;
  return s;
}

// v's data with room for at least n elements (a scratch buffer only grows).
template <typename E>
E* grown(std::vector<E>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// Whether a task of this many query rows runs its prefix blocks with the rows in lanes.
template <bool kAvx2>
inline bool rows_in_lanes(int rows) {
  return kHaveLanes && kAvx2 && rows >= kLanesMinRows;
}
inline int lanes_rows(int rows) {
  return (rows + kLanes - 1) / kLanes * kLanes;
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

// Bit c: lane c of the block holds a key the row sees (lanes [first, last), and past the prefix
// only the tree nodes whose bit is set).
inline uint64_t visible_lanes(const BlockKeys& blk, uint64_t bits) {
  auto below = [](int n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; };
  uint64_t lanes = below(blk.last) & ~below(blk.first);
  const int tree0 = blk.prefix_len - blk.start;  // the first lane past the prefix
  if (tree0 < 64) {
    const uint64_t tree = tree0 >= 0 ? bits << tree0 : -tree0 < 64 ? bits >> -tree0 : 0;
    lanes &= (tree0 > 0 ? below(tree0) : 0) | tree;
  }
  return lanes;
}

// Online-softmax step of one query row over a key block: masks the scores `sc` [cols],
// replaces them by their weights exp2(s - m) (all 0 when no key is visible), updates the state
// and returns the factor for the row's previous output sum.
template <int kBlock>
inline float softmax_block(float* sc, const BlockKeys& blk, uint64_t bits, SoftmaxState* st) {
  const int vecs = blk.cols / kLanes;
  if (blk.needs_mask) {
    const uint64_t visible = visible_lanes(blk, bits);
    const Int8 lane_bit = {1, 2, 4, 8, 16, 32, 64, 128};
    for (int v = 0; v < vecs; ++v) {
      const int32_t byte = static_cast<int32_t>((visible >> (v * kLanes)) & 0xff);
      if (byte == 0xff) continue;
      const Int8 shown = ((Int8{} + byte) & lane_bit) != 0;
      store8(sc + v * kLanes, shown ? load8(sc + v * kLanes) : splat8(attn_neg_inf()));
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
  Vec8 m = splat8(st->m), l = splat8(st->l);
  const float alpha = raise_states8(&m, &l, splat8(block_max))[0];
  st->m = m[0];
  st->l = l[0];
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
  // rows with their lanes (lanes_block): ld rows, the last up to 7 of them padding
  const bool lanes = rows_in_lanes<kAvx2>(rows);
  bool in_lanes = lanes && task.lo < prefix;  // a chunk of tree keys alone starts in rows
  const int ld = lanes_rows(rows);
  if (s.st.size() < static_cast<size_t>(ld)) {
    s.st.resize(ld);
    s.all_visible.assign(ld, ~uint64_t{0});
  }
  float* qs = grown(s.q, static_cast<size_t>(rows) * D);
  float* o = grown(s.o, static_cast<size_t>(rows) * D);
  float* qt = lanes ? grown(s.qt, static_cast<size_t>(ld) * D) : nullptr;
  SoftmaxState* st = s.st.data();
  const uint64_t* all_visible = s.all_visible.data();
  // The chunks of a kv head often run one after another on a thread: they share the queries.
  if (s.q_call != p.call || s.q_b != task.b || s.q_g != task.g) {
    // (qscale in a local: a store through qs could alias p, which kept these loops scalar)
    const float qscale = p.qscale;
    for (int r = 0; r < rows; ++r) {
      const int64_t t = r / group;
      const T* src = p.q + ((start + t) * sh.heads + task.g * group + r % group) * D;
      float* dst = qs + r * D;
      for (int d = 0; d < D; ++d) dst[d] = to_float(src[d]) * qscale;
    }
    s.q_call = p.call;
    s.q_b = task.b;
    s.q_g = task.g;
    s.q_panels = false;
  }
  if (in_lanes && !s.q_panels) {
    lanes_transpose_in<D>(qs, rows, ld, qt);
    s.q_panels = true;
  }
  for (int r = 0; r < ld; ++r) st[r] = softmax_state_empty();
  if (!in_lanes) std::memset(o, 0, sizeof(float) * rows * D);  // else leave_lanes writes it
  // A chunk's output sums in lanes go straight to its partial state.
  float* const part = task.partial >= 0 ? partials + task.partial : nullptr;
  float* ot = nullptr;
  if (in_lanes) {
    ot = part != nullptr ? part : grown(s.ot, static_cast<size_t>(ld) * D);
    std::memset(ot, 0, sizeof(float) * ld * D);
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
    ktree = grown(s.ktree, static_cast<size_t>(tree) * D);
    vtree = grown(s.vtree, static_cast<size_t>(tree) * D);
    anc = grown(s.ancestors, static_cast<size_t>(tree) * kMaxTreeNodes);
    num_visible = grown(s.num_visible, static_cast<size_t>(tree));
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
    const bool prefix_only = bs + blk.last <= prefix;  // keys shared by every row
    if (in_lanes) {
      if (!blk.needs_mask && prefix_only) {
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
        lanes_block<D, kBlock>(ld, qt, krows, vrows, st, ot);
        continue;
      }
      leave_lanes();
    }
    // The task's prefix keys, lanes [key_lo, key_hi): K transposed into kt (8 lanes at once
    // where all 8 are keys), V rows pointed at or converted. Tree lanes are filled per token.
    const int key_lo = blk.first, key_hi = std::min(blk.last, prefix - bs);
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
    if (prefix_only) {
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
    // lanes past the token's last visible node hold node 0 (to the end of its 8) or stale
    // keys, and are masked.
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
        if (c % kLanes == 0) {  // 8 lanes: one register transpose (node 0 in the masked ones)
          const float* krows[kLanes];
          for (int i = 0; i < kLanes; ++i) {
            const int node = c + i < tb.last ? lane_node(c + i) : 0;
            krows[i] = ktree + node * D;
            vrows[c + i] = vtree + node * D;
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

  if (part == nullptr) {
    if (in_lanes) leave_lanes();
    for (int r = 0; r < rows; ++r) write_row(p, task.b, task.g, r, D, o + r * D, st[r]);
    return;
  }
  if (lanes) {
    if (!in_lanes) lanes_transpose_in<D>(o, rows, ld, part);  // tree blocks took it to rows
    float* m = part + ld * D;
    for (int r = 0; r < ld; ++r) {
      m[r] = st[r].m;
      m[ld + r] = st[r].l;
    }
    return;
  }
  for (int r = 0; r < rows; ++r) {
    std::memcpy(part + r * (D + 2), o + r * D, sizeof(float) * D);
    part[r * (D + 2) + D] = st[r].m;
    part[r * (D + 2) + D + 1] = st[r].l;
  }
}

// Merges the partial states of a chunked (request, kv head) in chunk order, into the first
// chunk's, and writes the rows.
template <bool kAvx2, typename T, int D>
inline void merge_head(const Problem<T>& p, const Task* tasks, const ChunkedHead& head,
                       float* partials) {
  const Task& first = tasks[head.first_task];
  const int rows = static_cast<int>((p.indptr[first.b + 1] - p.indptr[first.b]) * p.group);
  Scratch& s = thread_scratch();
  float* acc = partials + first.partial;
  if (!rows_in_lanes<kAvx2>(rows)) {
    for (int r = 0; r < rows; ++r) {
      float* a = acc + r * (D + 2);
      Vec8 m = splat8(a[D]), l = splat8(a[D + 1]);
      for (int64_t c = 1; c < head.num_tasks; ++c) {
        const float* b = partials + tasks[head.first_task + c].partial + r * (D + 2);
        Vec8 fa, fb;
        merge_states8<kAvx2>(&m, &l, splat8(b[D]), splat8(b[D + 1]), &fa, &fb);
        for (int d = 0; d < D; d += kLanes) {
          store8(a + d, merge8<kAvx2>(load8(a + d), fa, load8(b + d), fb));
        }
      }
      write_row(p, first.b, first.g, r, D, a, SoftmaxState{m[0], l[0]});
    }
    return;
  }
  // The rows' factors for every chunk first, then each sum merged through all chunks at once.
  const int ld = lanes_rows(rows);
  const int64_t n = head.num_tasks;
  float* m = grown(s.merged_m, ld);
  float* l = grown(s.merged_l, ld);
  float* fa = grown(s.fa, n * ld);  // [chunk][ld]
  float* fb = grown(s.fb, n * ld);
  std::memcpy(m, acc + ld * D, sizeof(float) * ld);
  std::memcpy(l, acc + ld * D + ld, sizeof(float) * ld);
  for (int64_t c = 1; c < n; ++c) {
    const float* b = partials + tasks[head.first_task + c].partial + ld * D;
    for (int r0 = 0; r0 < ld; r0 += kLanes) {
      Vec8 am = load8(m + r0), al = load8(l + r0), f, g;
      merge_states8<kAvx2>(&am, &al, load8(b + r0), load8(b + ld + r0), &f, &g);
      store8(m + r0, am);
      store8(l + r0, al);
      store8(fa + c * ld + r0, f);
      store8(fb + c * ld + r0, g);
    }
  }
  for (int p0 = 0; p0 < ld; p0 += kLanesScStride) {
    const int w = panel_width(p0, ld);
    for (int d = 0; d < D; ++d) {
      for (int r0 = 0; r0 < w; r0 += kLanes) {
        const int64_t i = p0 * D + d * w + r0;
        Vec8 sum = load8(acc + i);
        for (int64_t c = 1; c < n; ++c) {
          const float* b = partials + tasks[head.first_task + c].partial;
          sum = merge8<kAvx2>(sum, load8(fa + c * ld + p0 + r0), load8(b + i),
                              load8(fb + c * ld + p0 + r0));
        }
        store8(acc + i, sum);
      }
    }
  }
  float* o = grown(s.o, static_cast<size_t>(rows) * D);
  lanes_transpose_out<D>(acc, rows, ld, o);
  for (int r = 0; r < rows; ++r) {
    write_row(p, first.b, first.g, r, D, o + r * D, SoftmaxState{m[r], l[r]});
  }
}

template <typename T, int D>
__attribute__((flatten)) void run_task_generic(const Problem<T>& p, const Task& task,
                                               float* partials) {
  run_task<false, T, D>(p, task, partials);
}

template <typename T, int D>
__attribute__((flatten)) void merge_head_generic(const Problem<T>& p, const Task* tasks,
                                                 const ChunkedHead& head, float* partials) {
  merge_head<false, T, D>(p, tasks, head, partials);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
template <typename T, int D>
__attribute__((target("avx2,fma"), flatten)) void run_task_avx2(const Problem<T>& p,
                                                                const Task& task,
                                                                float* partials) {
  run_task<true, T, D>(p, task, partials);
}

template <typename T, int D>
__attribute__((target("avx2,fma"), flatten)) void merge_head_avx2(const Problem<T>& p,
                                                                  const Task* tasks,
                                                                  const ChunkedHead& head,
                                                                  float* partials) {
  merge_head<true, T, D>(p, tasks, head, partials);
}

// ADAEAGLE_NO_AVX2=1 (read once) forces the portable path, so tests can run it here too.
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          std::getenv("ADAEAGLE_NO_AVX2") == nullptr;
  return has;
}
#endif

// The task and merge functions of one code path (AVX2 or portable).
template <typename T>
struct Kernels {
  void (*task)(const Problem<T>&, const Task&, float*);
  void (*merge)(const Problem<T>&, const Task*, const ChunkedHead&, float*);
  bool avx2;
};

template <typename T, int D>
Kernels<T> pick_kernels() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (cpu_has_avx2()) return {&run_task_avx2<T, D>, &merge_head_avx2<T, D>, true};
#endif
  return {&run_task_generic<T, D>, &merge_head_generic<T, D>, false};
}

std::atomic<uint64_t> g_calls{0};

template <typename T>
void run(const Problem<T>& p) {
  const TreeAttentionShape& sh = p.shape;
  const Kernels<T> kern = sh.dim == 64 ? pick_kernels<T, 64>() : pick_kernels<T, 128>();
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
        tasks.push_back({b, g, clo, chi, -1, int64_t{chi - clo + 32} * rows, -1});
      }
      if (hi <= lo) tasks.push_back({b, g, lo, lo, -1, rows, -1});
      const int64_t count = static_cast<int64_t>(tasks.size()) - first;
      if (count > 1) {
        const bool lanes = kern.avx2 ? rows_in_lanes<true>(rows) : rows_in_lanes<false>(rows);
        const int64_t size = (lanes ? lanes_rows(rows) : rows) * (sh.dim + 2);
        for (int64_t i = first; i < first + count; ++i) {
          tasks[i].partial = partial_size;
          tasks[i].head = static_cast<int32_t>(chunked.size());
          partial_size += size;
        }
        chunked.push_back({first, count});
      }
    }
  }
  if (tasks.empty()) return;

  thread_local std::vector<float> partials;
  float* part = grown(partials, static_cast<size_t>(partial_size));
  std::unique_ptr<std::atomic<int64_t>[]> left(new std::atomic<int64_t>[chunked.size()]);
  for (size_t i = 0; i < chunked.size(); ++i) left[i].store(chunked[i].num_tasks);
  auto task_fn = [&](const Task& task) {
    kern.task(p, task, part);
    // (the last chunk of a head to finish sees the others' partial states: acq_rel)
    if (task.head >= 0 && left[task.head].fetch_sub(1, std::memory_order_acq_rel) == 1) {
      kern.merge(p, tasks.data(), chunked[task.head], part);
    }
  };

  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), num_tasks);
  if (threads <= 1) {
    for (const Task& task : tasks) task_fn(task);
  } else {
    // Longest tasks first, handed out one at a time to whichever thread is free. Among equal
    // tasks of a request with at most one register tile of rows (a decode step, which waits
    // on DRAM), a chunk's kv heads go in turn: their K/V rows interleave in the cache, so the
    // threads read neighbouring lines.
    std::vector<int64_t> order(num_tasks);
    std::iota(order.begin(), order.end(), 0);
    auto key = [&](int64_t i) {
      const Task& t = tasks[i];
      const bool few_rows = (p.indptr[t.b + 1] - p.indptr[t.b]) * p.group <= kTileRows;
      return std::make_tuple(-t.cost, t.b, few_rows ? t.lo : t.g, few_rows ? t.g : t.lo);
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return key(a) < key(b); });
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      for (int64_t i = next.fetch_add(1); i < num_tasks; i = next.fetch_add(1)) {
        task_fn(tasks[order[i]]);
      }
    });
  }
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
                 shape.heads / shape.hkv, scale * kLog2e, mode, ++g_calls};
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
