// tree_attention's CPU layout for long calls: the query rows of a task in the vector lanes
// (see lanes_tile). AVX2 only; tree_attention.cpp picks it by row count.
#pragma once

#include "adaeagle/tree_attention.h"
#include "cpu/attn_vec8.h"

#include <algorithm>

namespace adaeagle::cpu::attn {

// The layout pays only with AVX2's broadcasts and FMAs; elsewhere it compiles but is not used.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
constexpr bool kHaveLanes = true;
#define ADAEAGLE_LANES_FN __attribute__((target("avx2,fma"), noinline))
#else
constexpr bool kHaveLanes = false;
#define ADAEAGLE_LANES_FN
#endif
constexpr int kLanesMinRows = 24;

// Query rows in lanes. From kLanesMinRows query rows on, the AVX2 path runs the blocks of
// prefix keys with a task's rows in the vector lanes: queries transposed once per task into
// one panel per register tile (qt, see panel_width), scores [key][row] with each key
// broadcast from its row as stored (no K transpose), the softmax across registers (no
// horizontal max or sum per row) and the output sum in panels like the queries' (ot). Each
// row's arithmetic is that of block_tile: the same FMA chains over d and over keys, the same
// exp2 and state update (raise_states8, 8 rows at a time here), and the weights summed in
// softmax_block's lane order, then in hsum8's sequence. So a row gets the same bits in either
// layout (the batch-invariance tests compare a row alone, in the 3 x 4 tiles, with the same
// row in a long call).
constexpr int kLanesTileVecs = 3;                      // row vectors per tile
constexpr int kLanesScStride = kLanesTileVecs * kLanes;  // sc [key][24 rows]

// qt and ot hold ld rows (a multiple of 8) as panels [D][w], one per register tile: tiles of
// 24 rows from row 0, then one of 16 or 8. The panel of the tile at row r0 starts at r0 * D,
// so a tile's D x w values are contiguous and its loads have a constant stride.
inline int panel_width(int r0, int ld) { return std::min(kLanesScStride, ld - r0); }

// One block of kBlock prefix keys (fp32 rows krows[c], vrows[c]) for rows [r0, r0 + 8 NV).
template <int D, int kBlock, int NV>
ADAEAGLE_LANES_FN void lanes_tile(
    int r0, const float* qt, const float* const* krows, const float* const* vrows,
    SoftmaxState* st, float* ot) {
  constexpr int kKeys = NV == 1 ? 8 : 4;  // keys (scores) or dims (output) per register tile
  constexpr int kW = NV * kLanes;          // the panel's width
  const float* qp = qt + r0 * D;
  float* op = ot + r0 * D;
  alignas(32) float sc[kBlock * kLanesScStride];
  Vec8 mx[NV];  // the rows' block maxima, taken as the scores are stored (max is exact)
  for (int c0 = 0; c0 < kBlock; c0 += kKeys) {
    Vec8 acc[NV][kKeys] = {};
    for (int d = 0; d < D; ++d) {
      Vec8 q[NV];
      for (int i = 0; i < NV; ++i) q[i] = load8(qp + d * kW + i * kLanes);
      for (int j = 0; j < kKeys; ++j) {
        const Vec8 k = bcast8<kHaveLanes>(krows[c0 + j] + d);
        for (int i = 0; i < NV; ++i) acc[i][j] += q[i] * k;
      }
    }
    for (int j = 0; j < kKeys; ++j) {
      for (int i = 0; i < NV; ++i) {
        store8(sc + (c0 + j) * kLanesScStride + i * kLanes, acc[i][j]);
        mx[i] = c0 + j == 0 ? acc[i][j] : mx[i] > acc[i][j] ? mx[i] : acc[i][j];
      }
    }
  }
  Vec8 alpha[NV];
  for (int i = 0; i < NV; ++i) {
    // softmax_block for 8 rows: a row without a visible key (max -inf) keeps its state and
    // gets zero weights
    SoftmaxState* rows = st + r0 + i * kLanes;
    Vec8 mv, lv;
    for (int lane = 0; lane < kLanes; ++lane) {
      mv[lane] = rows[lane].m;
      lv[lane] = rows[lane].l;
    }
    alpha[i] = raise_states8(&mv, &lv, mx[i]);
    for (int lane = 0; lane < kLanes; ++lane) rows[lane] = SoftmaxState{mv[lane], lv[lane]};
    const Int8 dead = mx[i] == splat8(attn_neg_inf());
    bool any_dead = false;
    for (int lane = 0; lane < kLanes; ++lane) any_dead = any_dead || dead[lane] != 0;
    Vec8 part[kLanes] = {};  // part[j]: keys j, j + 8, ... in order, as softmax_block's lane j
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
      if (!dead[lane]) rows[lane].l += sum[lane];
    }
  }
  for (int d0 = 0; d0 < D; d0 += kKeys) {
    Vec8 acc[NV][kKeys];
    for (int j = 0; j < kKeys; ++j) {
      for (int i = 0; i < NV; ++i) {
        acc[i][j] = load8(op + (d0 + j) * kW + i * kLanes) * alpha[i];
      }
    }
    for (int c = 0; c < kBlock; ++c) {
      Vec8 w[NV];
      for (int i = 0; i < NV; ++i) w[i] = load8(sc + c * kLanesScStride + i * kLanes);
      for (int j = 0; j < kKeys; ++j) {
        const Vec8 v = bcast8<kHaveLanes>(vrows[c] + d0 + j);
        for (int i = 0; i < NV; ++i) acc[i][j] += w[i] * v;
      }
    }
    for (int j = 0; j < kKeys; ++j) {
      for (int i = 0; i < NV; ++i) store8(op + (d0 + j) * kW + i * kLanes, acc[i][j]);
    }
  }
}

// qt = qs [rows][D] in panels, the rows from `rows` to ld zero.
template <int D>
ADAEAGLE_LANES_FN void lanes_transpose_in(const float* qs, int rows, int ld, float* qt) {
  alignas(32) static const float zeros[D] = {};
  for (int p0 = 0; p0 < ld; p0 += kLanesScStride) {
    const int w = panel_width(p0, ld);
    for (int r0 = p0; r0 < p0 + w; r0 += kLanes) {
      const float* src[kLanes];
      for (int i = 0; i < kLanes; ++i) src[i] = r0 + i < rows ? qs + (r0 + i) * D : zeros;
      for (int d0 = 0; d0 < D; d0 += kLanes) {
        Vec8 t[kLanes];
        load_transposed8<kHaveLanes>(src, d0, t);
        for (int j = 0; j < kLanes; ++j) store8(qt + p0 * D + (d0 + j) * w + r0 - p0, t[j]);
      }
    }
  }
}

// o [rows][D] = ot's panels transposed (the padding rows dropped).
template <int D>
ADAEAGLE_LANES_FN void lanes_transpose_out(const float* ot, int rows, int ld, float* o) {
  for (int p0 = 0; p0 < ld; p0 += kLanesScStride) {
    const int w = panel_width(p0, ld);
    for (int d0 = 0; d0 < D; d0 += kLanes) {
      const float* src[kLanes];
      for (int i = 0; i < kLanes; ++i) src[i] = ot + p0 * D + (d0 + i) * w;
      for (int r0 = 0; r0 < w; r0 += kLanes) {
        Vec8 t[kLanes];
        load_transposed8<kHaveLanes>(src, r0, t);
        for (int j = 0; j < kLanes && p0 + r0 + j < rows; ++j) {
          store8(o + (p0 + r0 + j) * D + d0, t[j]);
        }
      }
    }
  }
}

// One block of kBlock prefix keys for all ld rows (a multiple of 8).
template <int D, int kBlock>
void lanes_block(int ld, const float* qt, const float* const* krows, const float* const* vrows,
                 SoftmaxState* st, float* ot) {
  int r0 = 0;
  for (; r0 + kLanesScStride <= ld; r0 += kLanesScStride) {
    lanes_tile<D, kBlock, 3>(r0, qt, krows, vrows, st, ot);
  }
  if (ld - r0 == 2 * kLanes) lanes_tile<D, kBlock, 2>(r0, qt, krows, vrows, st, ot);
  if (ld - r0 == kLanes) lanes_tile<D, kBlock, 1>(r0, qt, krows, vrows, st, ot);
}

#undef ADAEAGLE_LANES_FN

}  // namespace adaeagle::cpu::attn
