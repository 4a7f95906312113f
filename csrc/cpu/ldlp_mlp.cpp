#include "cpu/ldlp_mlp.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>

namespace adaeagle::cpu {
namespace {

// Rows computed together, so each weight row is loaded once for all of them.
constexpr int kRowTile = 4;
// A batch that fills fewer row tiles than there are threads splits every layer's neurons over
// the threads instead, once a row costs at least this many multiply-adds. Measured with 2
// threads (OpenMP build), B=1, H=576: W=256 (0.5M) gains ~5%, W=512 (1.4M) 1.8x, W=1024 2x.
// at::parallel_for only runs in parallel when this file is compiled with -fopenmp.
constexpr int64_t kMinSplitMacs = 1 << 20;
// Smallest share of neurons a thread gets when a layer is split.
constexpr int64_t kNeuronGrain = 32;

constexpr int kProj = -1;  // layer index of the input projection; blocks are 0..2

template <typename TA, typename TW>
struct Net {
  const TA* emb;
  const TA* hidden;
  const TW* w_in;
  const TW* b_in;
  const TW* w_blocks;
  const TW* b_blocks;
  const TW* w_out;
  const TW* b_out;
  int hidden_size;
  int width;
  int32_t k_max;
  float eps;
  int32_t* lengths;
  float* raw;
};

#define LDLP_ALWAYS_INLINE __attribute__((always_inline)) inline

// Output neurons [o, o + C) of one layer for the R rows starting at row0. The projection
// writes x_out[r * W + o]; block l reads x_in and writes x_out = x_in + silu(W_l x_in + b_l).
template <int R, int C, typename TA, typename TW>
LDLP_ALWAYS_INLINE void neuron_tile(const Net<TA, TW>& net, int layer, int64_t row0,
                                    const float* scale_e, const float* scale_f,
                                    const float* x_in, float* x_out, int o) {
  const int H = net.hidden_size;
  const int W = net.width;
  float acc[R][C];
  if (layer == kProj) {
    const TW* w = net.w_in + static_cast<int64_t>(o) * 2 * H;
    float acc_f[R][C];
    ldlp_dot_tile<R, C>(w, 2 * H, net.emb + row0 * H, H, H, acc);
    ldlp_dot_tile<R, C>(w + H, 2 * H, net.hidden + row0 * H, H, H, acc_f);
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) {
        x_out[r * W + o + c] =
            scale_e[r] * acc[r][c] + scale_f[r] * acc_f[r][c] + ldlp_load(net.b_in[o + c]);
      }
    }
  } else {
    const int64_t wl = static_cast<int64_t>(layer) * W;
    ldlp_dot_tile<R, C>(net.w_blocks + (wl + o) * W, W, x_in, W, W, acc);
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) {
        const float pre = acc[r][c] + ldlp_load(net.b_blocks[wl + o + c]);
        x_out[r * W + o + c] = x_in[r * W + o + c] + ldlp_silu(pre);
      }
    }
  }
}

// Output neurons [begin, end) of one layer, C at a time when one row alone cannot keep the
// multiply-adds busy.
template <int R, typename TA, typename TW>
LDLP_ALWAYS_INLINE void layer_neurons(const Net<TA, TW>& net, int layer, int64_t row0,
                                      const float* se, const float* sf, const float* x_in,
                                      float* x_out, int begin, int end) {
  constexpr int C = R == 1 ? 4 : 1;  // measured: more neurons per tile only help one row
  int o = begin;
  for (; o + C <= end; o += C) neuron_tile<R, C>(net, layer, row0, se, sf, x_in, x_out, o);
  for (; o < end; ++o) neuron_tile<R, 1>(net, layer, row0, se, sf, x_in, x_out, o);
}

// layer_neurons compiled for AVX2 + FMA and for the baseline instruction set.
#if defined(__x86_64__) && defined(__GNUC__)
template <int R, typename TA, typename TW>
__attribute__((target("avx2,fma"))) void layer_avx2(const Net<TA, TW>& net, int layer,
                                                    int64_t row0, const float* se,
                                                    const float* sf, const float* x_in,
                                                    float* x_out, int begin, int end) {
  layer_neurons<R>(net, layer, row0, se, sf, x_in, x_out, begin, end);
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <int R, typename TA, typename TW>
void layer_base(const Net<TA, TW>& net, int layer, int64_t row0, const float* se,
                const float* sf, const float* x_in, float* x_out, int begin, int end) {
  layer_neurons<R>(net, layer, row0, se, sf, x_in, x_out, begin, end);
}

template <int R, typename TA, typename TW>
void layer(const Net<TA, TW>& net, int layer, int64_t row0, const float* se, const float* sf,
           const float* x_in, float* x_out, bool split) {
  auto run = [&](int begin, int end) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpu_has_avx2()) {
      layer_avx2<R>(net, layer, row0, se, sf, x_in, x_out, begin, end);
      return;
    }
#endif
    layer_base<R>(net, layer, row0, se, sf, x_in, x_out, begin, end);
  };
  if (split) {
    at::parallel_for(0, net.width, kNeuronGrain, [&](int64_t begin, int64_t end) {
      run(static_cast<int>(begin), static_cast<int>(end));
    });
  } else {
    run(0, net.width);
  }
}

// The whole network for rows [row0, row0 + R).
template <int R, typename TA, typename TW>
void run_tile(const Net<TA, TW>& net, int64_t row0, bool split) {
  const int H = net.hidden_size;
  const int W = net.width;
  float se[R];
  float sf[R];
  for (int r = 0; r < R; ++r) {
    se[r] = ldlp_rms_scale(ldlp_sum_sq(net.emb + (row0 + r) * H, H), H, net.eps);
    sf[r] = ldlp_rms_scale(ldlp_sum_sq(net.hidden + (row0 + r) * H, H), H, net.eps);
  }
  alignas(64) float buf_a[R * kLdlpMaxWidth];
  alignas(64) float buf_b[R * kLdlpMaxWidth];
  float* x = buf_a;
  float* y = buf_b;
  layer<R>(net, kProj, row0, se, sf, nullptr, x, split);
  for (int l = 0; l < kLdlpBlocks; ++l) {
    layer<R>(net, l, row0, se, sf, x, y, split);
    std::swap(x, y);
  }
  for (int r = 0; r < R; ++r) {
    float dot[1][1];
    ldlp_dot_tile<1, 1>(net.w_out, W, x + r * W, W, W, dot);
    const float out = dot[0][0] + ldlp_load(net.b_out[0]);
    net.lengths[row0 + r] = ldlp_clamp_round(out, net.k_max);
    if (net.raw != nullptr) net.raw[row0 + r] = out;
  }
}

template <typename TA, typename TW>
void run_rows(const Net<TA, TW>& net, int64_t row0, int64_t rows, bool split) {
  switch (rows) {
    case 1: return run_tile<1>(net, row0, split);
    case 2: return run_tile<2>(net, row0, split);
    case 3: return run_tile<3>(net, row0, split);
    default: return run_tile<4>(net, row0, split);
  }
}

template <typename TA, typename TW>
void run_batch(const Net<TA, TW>& net, int64_t batch) {
  const int64_t tiles = (batch + kRowTile - 1) / kRowTile;
  const int64_t macs_per_row =
      static_cast<int64_t>(net.width) * (2 * net.hidden_size + kLdlpBlocks * net.width);
  const int threads = at::get_num_threads();
  const bool split = threads > 1 && tiles < threads && macs_per_row >= kMinSplitMacs &&
                     !at::in_parallel_region();
  auto tile_range = [&](int64_t begin, int64_t end, bool split_layers) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row0 = t * kRowTile;
      run_rows(net, row0, std::min<int64_t>(kRowTile, batch - row0), split_layers);
    }
  };
  if (split || tiles <= 1) {
    tile_range(0, tiles, split);
  } else {
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      tile_range(begin, end, false);
    });
  }
}

template <typename TA, typename TW>
void dispatch(const void* emb, const void* hidden, const void* w_in, const void* b_in,
              const void* w_blocks, const void* b_blocks, const void* w_out, const void* b_out,
              int64_t batch, int64_t hidden_size, int64_t width, int32_t k_max, float eps,
              int32_t* lengths, float* raw) {
  const Net<TA, TW> net{static_cast<const TA*>(emb),      static_cast<const TA*>(hidden),
                        static_cast<const TW*>(w_in),     static_cast<const TW*>(b_in),
                        static_cast<const TW*>(w_blocks), static_cast<const TW*>(b_blocks),
                        static_cast<const TW*>(w_out),    static_cast<const TW*>(b_out),
                        static_cast<int>(hidden_size),    static_cast<int>(width),
                        k_max,                            eps,
                        lengths,                          raw};
  run_batch(net, batch);
}

template <typename TA>
void dispatch_weights(LdlpDtype weight_dtype, const void* emb, const void* hidden,
                      const void* w_in, const void* b_in, const void* w_blocks,
                      const void* b_blocks, const void* w_out, const void* b_out, int64_t batch,
                      int64_t hidden_size, int64_t width, int32_t k_max, float eps,
                      int32_t* lengths, float* raw) {
  if (weight_dtype == kLdlpBFloat16) {
    dispatch<TA, LdlpBf16>(emb, hidden, w_in, b_in, w_blocks, b_blocks, w_out, b_out, batch,
                           hidden_size, width, k_max, eps, lengths, raw);
  } else {
    dispatch<TA, float>(emb, hidden, w_in, b_in, w_blocks, b_blocks, w_out, b_out, batch,
                        hidden_size, width, k_max, eps, lengths, raw);
  }
}

}  // namespace

void ldlp_mlp(const void* emb, const void* hidden, LdlpDtype act_dtype, const void* w_in,
              const void* b_in, const void* w_blocks, const void* b_blocks, const void* w_out,
              const void* b_out, LdlpDtype weight_dtype, int64_t batch, int64_t hidden_size,
              int64_t width, int32_t k_max, float eps, int32_t* lengths, float* raw,
              int32_t* max_len) {
  if (act_dtype == kLdlpBFloat16) {
    dispatch_weights<LdlpBf16>(weight_dtype, emb, hidden, w_in, b_in, w_blocks, b_blocks, w_out,
                               b_out, batch, hidden_size, width, k_max, eps, lengths, raw);
  } else {
    dispatch_weights<float>(weight_dtype, emb, hidden, w_in, b_in, w_blocks, b_blocks, w_out,
                            b_out, batch, hidden_size, width, k_max, eps, lengths, raw);
  }
  if (max_len != nullptr) {
    int32_t longest = 0;
    for (int64_t b = 0; b < batch; ++b) longest = std::max(longest, lengths[b]);
    *max_len = longest;
  }
}

}  // namespace adaeagle::cpu
