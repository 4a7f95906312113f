// tree_attention's rows-in-lanes layout (csrc/cpu/tree_attention_lanes.h) against this core's
// FMA peak: one thread calls lanes_block, the default model's D = 64, 64-key blocks, and
// prints the achieved 8-lane FMA instructions per second next to a register-only FMA loop's.
//   hot:       one K/V block, called again and again (it stays in L1/L2);
//   streaming: 96 blocks in turn, a 3 MiB K/V span like one kv head x 3 at prefix 2048, so
//              each block comes from L3 as in a real call.
// Rows: 184 is T = 60 tokens x 3 query heads per kv head, padded to 8 (7 tiles of 24 rows and
// one of 16); 80 is T = 26; 24 is one tile.
//
// Build and run from the repository root (with the project's .venv):
//   T=.venv/lib/python3.11/site-packages/torch
//   g++ -O3 -std=c++17 -Icsrc -Icsrc/include -I$T/include benchmarks/micro_attention_lanes.cpp
//       -L$T/lib -lc10 -Wl,-rpath,$T/lib -o /tmp/attn_lanes      (one command line)
//   /tmp/attn_lanes [rounds]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/tree_attention_lanes.h"

namespace {

using adaeagle::SoftmaxState;
namespace attn = adaeagle::cpu::attn;

constexpr int kDim = 64, kBlock = 64, kRowStride = 3 * kDim;  // 3 kv heads per cache row

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// 12 independent accumulators, as in the 3 x 4 tile: the core's FMA throughput.
__attribute__((target("avx2,fma"), noinline)) double peak_fma_per_second(long iters) {
  volatile float init[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};  // 12 distinct chains
  __m256 a0 = _mm256_set1_ps(init[0]), a1 = _mm256_set1_ps(init[1]);
  __m256 a2 = _mm256_set1_ps(init[2]), a3 = _mm256_set1_ps(init[3]);
  __m256 a4 = _mm256_set1_ps(init[4]), a5 = _mm256_set1_ps(init[5]);
  __m256 a6 = _mm256_set1_ps(init[6]), a7 = _mm256_set1_ps(init[7]);
  __m256 a8 = _mm256_set1_ps(init[8]), a9 = _mm256_set1_ps(init[9]);
  __m256 a10 = _mm256_set1_ps(init[10]), a11 = _mm256_set1_ps(init[11]);
  const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-4f);
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < iters; ++i) {
    a0 = _mm256_fmadd_ps(a0, x, y), a1 = _mm256_fmadd_ps(a1, x, y);
    a2 = _mm256_fmadd_ps(a2, x, y), a3 = _mm256_fmadd_ps(a3, x, y);
    a4 = _mm256_fmadd_ps(a4, x, y), a5 = _mm256_fmadd_ps(a5, x, y);
    a6 = _mm256_fmadd_ps(a6, x, y), a7 = _mm256_fmadd_ps(a7, x, y);
    a8 = _mm256_fmadd_ps(a8, x, y), a9 = _mm256_fmadd_ps(a9, x, y);
    a10 = _mm256_fmadd_ps(a10, x, y), a11 = _mm256_fmadd_ps(a11, x, y);
  }
  const double t = seconds_since(t0);
  const __m256 s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11));
  if (s[0] == 12345.0f) std::printf(" ");  // keeps the loop
  return 12.0 * iters / t;
}

// Best µs per block of `rows` query rows over `blocks` K/V blocks taken in turn.
double lanes_block_us(int rows, int blocks, int calls, int rounds) {
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::vector<float> kv(size_t{2} * blocks * kBlock * kRowStride);
  std::vector<float> qt(size_t(rows) * kDim), ot(size_t(rows) * kDim, 0.0f);
  for (float& x : kv) x = 0.1f * normal(gen);
  for (float& x : qt) x = 0.1f * normal(gen);
  std::vector<SoftmaxState> st(rows, adaeagle::softmax_state_empty());
  std::vector<const float*> krows(size_t(blocks) * kBlock), vrows(krows.size());
  for (size_t c = 0; c < krows.size(); ++c) {
    krows[c] = kv.data() + c * kRowStride;
    vrows[c] = kv.data() + (krows.size() + c) * kRowStride;
  }
  double best = 1e30;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) {
      const size_t first = size_t(i % blocks) * kBlock;
      attn::lanes_block<kDim, kBlock>(rows, qt.data(), krows.data() + first,
                                      vrows.data() + first, st.data(), ot.data());
    }
    best = std::min(best, seconds_since(t0) / calls);
  }
  return best * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 9;
  const double peak = peak_fma_per_second(100000000);
  std::printf("FMA peak, one core: %.2f G instructions/s\n", peak / 1e9);
  std::printf("%5s %10s %12s %10s %8s\n", "rows", "K/V", "us/block", "G FMA/s", "of peak");
  for (int rows : {24, 80, 184}) {
    for (int blocks : {1, 96}) {
      const double us = lanes_block_us(rows, blocks, 200000 / rows, rounds);
      const double fma = 2.0 * rows * kBlock * kDim / 8;  // scores and output, 8 lanes each
      std::printf("%5d %10s %12.2f %10.2f %7.0f%%\n", rows, blocks == 1 ? "hot" : "streaming",
                  us, fma / us / 1e3, 100.0 * fma / us / 1e3 / (peak / 1e9));
    }
  }
}
