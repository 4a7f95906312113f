// One-token tree_attention with its K/V in cache and in DRAM: the CPU kernel called directly
// (no Python), the default model's heads (9 query heads, 3 KV heads, D = 64), 1 token.
//   hot:  the same layer every call, so its K/V stay in L2/L3;
//   cold: a 30-layer cache, the next layer each call, and 64 MiB of other memory read between
//         calls, as a decode step's weights are, so every call reads its K/V from DRAM.
// Prints the median µs per call and the K/V bytes per µs (GB/s) of each.
//
// Build and run from the repository root (with the project's .venv):
//   T=.venv/lib/python3.11/site-packages/torch
//   g++ -O3 -fopenmp -std=c++17 -Icsrc -Icsrc/include -I$T/include \
//       csrc/cpu/tree_attention.cpp benchmarks/micro_attention_dram.cpp \
//       -L$T/lib -lc10 -ltorch_cpu -Wl,-rpath,$T/lib -o /tmp/attn_dram
//   OMP_NUM_THREADS=2 /tmp/attn_dram [rounds]
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/tree_attention.h"

namespace {

constexpr int kLayers = 30, kHeads = 9, kKvHeads = 3, kDim = 64;

template <typename T>
struct Case {
  int prefix;
  std::vector<T> cache, q, out;
  adaeagle::cpu::TreeAttentionShape shape;

  explicit Case(int prefix_len) : prefix(prefix_len) {
    const int s_max = prefix + 64;
    shape = {1, kHeads, kDim, kLayers, 1, s_max, kKvHeads, 1};
    std::mt19937 gen(0);
    std::normal_distribution<float> normal;
    cache.resize(size_t{kLayers} * 2 * s_max * kKvHeads * kDim);
    for (T& v : cache) v = T(normal(gen));
    q.resize(kHeads * kDim);
    for (T& v : q) v = T(normal(gen));
    out.resize(q.size());
  }

  void run(int layer) {
    const int32_t prefix_lens[1] = {prefix}, indptr[2] = {0, 1};
    const int64_t mask[1] = {1};
    const auto dtype = std::is_same_v<T, float> ? adaeagle::kAttnF32 : adaeagle::kAttnBF16;
    adaeagle::cpu::tree_attention(q.data(), cache.data(), dtype, shape, layer, prefix_lens,
                                  indptr, mask, 0.125f, 0, out.data(), nullptr);
  }

  // K and V bytes one call reads
  double bytes() const { return 2.0 * prefix * kKvHeads * kDim * sizeof(T); }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename T>
void measure(const char* name, int prefix, int rounds, std::vector<float>& other) {
  Case<T> c(prefix);
  std::vector<double> hot, cold;
  volatile float sink = 0.0f;
  for (int r = 0; r < rounds; ++r) {
    for (int l = 0; l < kLayers; ++l) {
      c.run(0);  // warm
      auto t0 = std::chrono::steady_clock::now();
      c.run(0);
      hot.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      float s = 0.0f;
      for (size_t i = 0; i < other.size(); i += 16) s += other[i];  // one float per line
      sink = sink + s;
      t0 = std::chrono::steady_clock::now();
      c.run(l);
      cold.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  const double h = median(hot), k = median(cold);
  std::printf("%s prefix %5d: hot %7.1f us (%5.1f GB/s)   cold %7.1f us (%5.1f GB/s)   cold/hot %.2f\n",
              name, prefix, h * 1e6, c.bytes() / h / 1e9, k * 1e6, c.bytes() / k / 1e9, k / h);
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 4;
  std::vector<float> other(size_t{16} << 20, 1.0f);  // 64 MiB
  for (int prefix : {512, 1024, 2048}) {
    measure<float>("fp32", prefix, rounds, other);
    measure<c10::BFloat16>("bf16", prefix, rounds, other);
  }
}
