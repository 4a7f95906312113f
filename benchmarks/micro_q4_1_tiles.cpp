// Q4_1 register tiles outside the extension: cycles per 8 weights of one weight row for
// tiles of MT input rows x NT weight rows, with J accumulators per output (J = 1 is the
// order of csrc/cpu/linear.h; J > 1 would be another order) and two int -> float decoders.
//
//   g++ -O3 -mavx2 -mfma -mf16c -o /tmp/q4_1_tiles benchmarks/micro_q4_1_tiles.cpp
//   /tmp/q4_1_tiles [N = 3072] [GHz = 3.2]
//
// One thread, K = 576, N weight rows (3072: 1.1 MB, in L2/L3), best of 7 x 50 calls.
// Results and what they ruled out: benchmarks/README.md, "Session 10".
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#define INLINE __attribute__((always_inline)) inline

namespace {

constexpr int kK = 576;
constexpr int kBlockBytes = 20;  // Q4_1: fp16 d, fp16 m, 16 bytes of nibbles
constexpr int kRowBytes = kK / 32 * kBlockBytes;

INLINE __m256i nibbles(const uint8_t* qs, int j) {
  const __m256i v =
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * (j & 1))));
  return j >= 2 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(0x0f));
}

// kMagic: int -> float as (bits | 0x4B000000) - 2^23 instead of vcvtdq2ps.
template <bool kMagic>
struct Block {
  const uint8_t* q;
  __m256 d, m;
  INLINE void load(const uint8_t* row, int c) {
    const uint8_t* blk = row + c * kBlockBytes;
    uint32_t dm_bits;
    std::memcpy(&dm_bits, blk, sizeof dm_bits);
    const __m256 dm = _mm256_cvtph_ps(_mm_set1_epi32(static_cast<int>(dm_bits)));
    d = _mm256_permute_ps(dm, 0x00);
    m = _mm256_permute_ps(dm, 0x55);
    q = blk + 4;
  }
  INLINE __m256 group(int j) const {
    __m256 f;
    if constexpr (kMagic) {
      const __m256i bits = _mm256_or_si256(nibbles(q, j), _mm256_set1_epi32(0x4B000000));
      f = _mm256_sub_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(8388608.0f));
    } else {
      f = _mm256_cvtepi32_ps(nibbles(q, j));
    }
    return _mm256_fmadd_ps(f, d, m);
  }
};

template <int MT, int NT, int J, bool kMagic>
__attribute__((noinline)) void run(const uint8_t* w, const float* x, float* y, int n_rows) {
  for (int n0 = 0; n0 < n_rows; n0 += NT) {
    __m256 acc[MT][NT][J];
    for (auto& a : acc) for (auto& b : a) for (auto& c : b) c = _mm256_setzero_ps();
    for (int c = 0; c < kK / 32; ++c) {
      Block<kMagic> blk[NT];
      for (int n = 0; n < NT; ++n) blk[n].load(w + (n0 + n) * kRowBytes, c);
      for (int j = 0; j < 4; ++j) {
        __m256 xv[MT];
        for (int m = 0; m < MT; ++m) xv[m] = _mm256_loadu_ps(x + m * kK + c * 32 + 8 * j);
        for (int n = 0; n < NT; ++n) {
          const __m256 wv = blk[n].group(j);
          for (int m = 0; m < MT; ++m) {
            acc[m][n][j % J] = _mm256_fmadd_ps(wv, xv[m], acc[m][n][j % J]);
          }
        }
      }
    }
    for (int m = 0; m < MT; ++m) {
      for (int n = 0; n < NT; ++n) {
        __m256 s = acc[m][n][0];
        for (int j = 1; j < J; ++j) s = _mm256_add_ps(s, acc[m][n][j]);
        float lanes[8];
        _mm256_storeu_ps(lanes, s);
        float total = 0;
        for (float v : lanes) total += v;
        y[m * n_rows + n0 + n] = total;
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int n_rows = argc > 1 ? std::atoi(argv[1]) : 3072;
  const double ghz = argc > 2 ? std::atof(argv[2]) : 3.2;
  std::vector<uint8_t> w(static_cast<size_t>(n_rows) * kRowBytes);
  std::mt19937 gen(1);
  for (auto& b : w) b = static_cast<uint8_t>(gen());
  const uint16_t one = 0x3c00;  // d = m = 1.0: finite sums whatever the random nibbles
  for (int n = 0; n < n_rows; ++n) {
    for (int c = 0; c < kK / 32; ++c) {
      std::memcpy(&w[n * kRowBytes + c * kBlockBytes], &one, 2);
      std::memcpy(&w[n * kRowBytes + c * kBlockBytes + 2], &one, 2);
    }
  }
  std::vector<float> x(8 * kK, 0.5f), y(8 * n_rows);
  auto time = [&](auto fn, const char* name, int rows) {
    double best = 1e9;
    for (int rep = 0; rep < 7; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 50; ++i) fn(w.data(), x.data(), y.data(), n_rows);
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 50;
      best = std::min(best, dt);
    }
    const double cycles = best * ghz * 1e9 / (static_cast<double>(n_rows) * kK / 8);
    std::printf("%-22s %8.1f us  %5.2f cycles / 8 weights  %5.2f per input row\n", name,
                best * 1e6, cycles, cycles / rows);
  };
  time(run<1, 2, 1, false>, "1x2 (shipped order)", 1);
  time(run<1, 2, 2, false>, "1x2, 2 accumulators", 1);
  time(run<1, 2, 4, false>, "1x2, 4 accumulators", 1);
  time(run<1, 1, 4, false>, "1x1, 4 accumulators", 1);
  time(run<1, 4, 1, false>, "1x4", 1);
  time(run<2, 2, 1, false>, "2x2", 2);
  time(run<3, 2, 1, false>, "3x2", 3);
  time(run<4, 2, 1, false>, "4x2", 4);
  time(run<4, 1, 1, false>, "4x1", 4);
  time(run<1, 2, 1, true>, "1x2, magic convert", 1);
  time(run<4, 2, 1, true>, "4x2, magic convert", 4);
  return 0;
}
