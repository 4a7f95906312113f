// The act_quant=8 Q4_1 tile outside the extension: the session-11 decoders (one register per
// weight row with a horizontal reduction per input row, or the 8 x 8 regrouping) against
// rows decoded in pairs (csrc/cpu/linear_q8_avx2.cpp since session 12), with the block heads
// fetched by vpgatherdd or by 8 scalar loads. Every variant's outputs are compared bit for bit
// with the first one's.
//
//   g++ -O3 -mavx2 -mfma -mf16c -o /tmp/q8_tiles benchmarks/micro_q8_tiles.cpp
//   /tmp/q8_tiles [N = 3072] [copies = 1]
//
// One thread, K = 576, N weight rows (3072: 1.1 MB, in L2/L3; copies > 1 cycles through that
// many weight copies, so that they stream from DRAM), best of 9 x 40 calls.
// Results: benchmarks/README.md, "Q4 weight rows in pairs for act_quant=8 (session 12)".
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

constexpr int kK = 576, kBlocks = kK / 32, kBlockBytes = 20, kRowBytes = kBlocks * kBlockBytes;
enum Decode { kReduced, kGrouped, kPaired };

INLINE __m256i reduce8_i16(const __m256i* v) {
  const __m256i t0 = _mm256_hadd_epi16(v[0], v[1]), t1 = _mm256_hadd_epi16(v[2], v[3]);
  const __m256i t2 = _mm256_hadd_epi16(v[4], v[5]), t3 = _mm256_hadd_epi16(v[6], v[7]);
  const __m256i u = _mm256_hadd_epi16(_mm256_hadd_epi16(t0, t1), _mm256_hadd_epi16(t2, t3));
  return _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(u)),
                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(u, 1)));
}

INLINE __m256i q4_bytes(const uint8_t* qs) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
}

INLINE void head_f16_pair(__m256i g, __m256* lo, __m256* hi) {
  const __m256i words = _mm256_packus_epi32(_mm256_and_si256(g, _mm256_set1_epi32(0xffff)),
                                            _mm256_srli_epi32(g, 16));
  const __m256i ordered = _mm256_permute4x64_epi64(words, 0xd8);
  *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(ordered));
  *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(ordered, 1));
}

INLINE __m256i heads_scalar(const uint8_t* blk) {
  __m128i pairs[4];
  for (int i = 0; i < 4; ++i) {
    int32_t a, b;
    std::memcpy(&a, blk + 2 * i * kRowBytes, 4);
    std::memcpy(&b, blk + (2 * i + 1) * kRowBytes, 4);
    pairs[i] = _mm_unpacklo_epi32(_mm_cvtsi32_si128(a), _mm_cvtsi32_si128(b));
  }
  return _mm256_set_m128i(_mm_unpacklo_epi64(pairs[2], pairs[3]),
                          _mm_unpacklo_epi64(pairs[0], pairs[1]));
}

INLINE void transpose8_epi32(const __m256i* w, __m256i* g) {
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

struct Act {
  const int8_t* q;
  const float* d;
  const float* s;
};

template <int MT, Decode kDecode, bool kGather>
__attribute__((noinline)) void run(const uint8_t* w, Act a, float* y, int n_rows) {
  const __m256i offsets = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                             _mm256_set1_epi32(kRowBytes));
  const __m256i mask = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  for (int n0 = 0; n0 < n_rows; n0 += 8) {
    const uint8_t* first = w + static_cast<int64_t>(n0) * kRowBytes;
    __m256 acc[MT];
    for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_ps();
    for (int b = 0; b < kBlocks; ++b) {
      const uint8_t* blk = first + b * kBlockBytes;
      __m256 dw, mw;
      head_f16_pair(kGather ? _mm256_i32gather_epi32(reinterpret_cast<const int*>(blk), offsets, 1)
                            : heads_scalar(blk),
                    &dw, &mw);
      __m256i wv[8], g[8], lo[4], hi[4];
      if constexpr (kDecode == kPaired) {
        for (int i = 0; i < 4; ++i) {
          const __m256i q = _mm256_inserti128_si256(
              _mm256_castsi128_si256(
                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + i * kRowBytes + 4))),
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (i + 4) * kRowBytes + 4)),
              1);
          lo[i] = _mm256_and_si256(q, mask);
          hi[i] = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
        }
      } else {
        for (int n = 0; n < 8; ++n) wv[n] = q4_bytes(blk + n * kRowBytes + 4);
        if constexpr (kDecode == kGrouped) transpose8_epi32(wv, g);
      }
      for (int m = 0; m < MT; ++m) {
        const int8_t* xq = a.q + m * kK + b * 32;
        __m256i dot;
        if constexpr (kDecode == kReduced) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
          __m256i p[8];
          for (int n = 0; n < 8; ++n) p[n] = _mm256_maddubs_epi16(wv[n], x);
          dot = reduce8_i16(p);
        } else if constexpr (kDecode == kGrouped) {
          const int32_t* x4 = reinterpret_cast<const int32_t*>(xq);
          __m256i pairs = _mm256_maddubs_epi16(g[0], _mm256_set1_epi32(x4[0]));
          for (int i = 1; i < 8; ++i) {
            pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(g[i], _mm256_set1_epi32(x4[i])));
          }
          dot = _mm256_madd_epi16(pairs, ones);
        } else {
          const __m256i x_lo = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(xq)));
          const __m256i x_hi = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16)));
          __m256i s[4];
          for (int i = 0; i < 4; ++i) {
            s[i] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo[i], x_lo),
                                                      _mm256_maddubs_epi16(hi[i], x_hi)),
                                     ones);
          }
          dot = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
        }
        const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d[m * kBlocks + b]));
        acc[m] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[m]);
        acc[m] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a.s[m * kBlocks + b]), acc[m]);
      }
    }
    for (int m = 0; m < MT; ++m) _mm256_storeu_ps(y + m * n_rows + n0, acc[m]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int n_rows = argc > 1 ? std::atoi(argv[1]) : 3072;
  const int copies = argc > 2 ? std::atoi(argv[2]) : 1;
  std::vector<uint8_t> w(static_cast<size_t>(n_rows) * kRowBytes * copies);
  std::mt19937 gen(1);
  for (auto& byte : w) byte = static_cast<uint8_t>(gen());
  const uint16_t d = 0x2c00, m = 0xac00;  // fp16 1/16 and -1/16: finite sums
  for (size_t r = 0; r < static_cast<size_t>(n_rows) * copies; ++r) {
    for (int c = 0; c < kBlocks; ++c) {
      std::memcpy(&w[r * kRowBytes + c * kBlockBytes], &d, 2);
      std::memcpy(&w[r * kRowBytes + c * kBlockBytes + 2], &m, 2);
    }
  }
  std::vector<int8_t> q(16 * kK);
  for (auto& v : q) v = static_cast<int8_t>(static_cast<int>(gen() % 255) - 127);
  std::vector<float> scales(16 * kBlocks, 0.01f), sums(16 * kBlocks, 0.3f);
  const Act a{q.data(), scales.data(), sums.data()};
  std::vector<float> expected(16 * n_rows), y(16 * n_rows);

  auto time = [&](auto fn, int rows, const char* name) {
    run<16, kReduced, true>(w.data(), a, expected.data(), n_rows);
    fn(w.data(), a, y.data(), n_rows);
    const bool same = std::memcmp(y.data(), expected.data(), sizeof(float) * rows * n_rows) == 0;
    double best = 1e9;
    for (int rep = 0; rep < 9; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 40; ++i) {
        fn(w.data() + static_cast<size_t>(i % copies) * n_rows * kRowBytes, a, y.data(), n_rows);
      }
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                                    .count() / 40);
    }
    std::printf("M=%-2d %-28s %8.1f us  %6.2f G weights/s%s\n", rows, name, best * 1e6,
                static_cast<double>(n_rows) * kK / best / 1e9, same ? "" : "  BITS DIFFER");
  };
  time(run<1, kReduced, true>, 1, "reduced, gathered heads");
  time(run<1, kReduced, false>, 1, "reduced, scalar heads");
  time(run<1, kPaired, true>, 1, "paired, gathered heads");
  time(run<1, kPaired, false>, 1, "paired, scalar heads");
  time(run<2, kReduced, true>, 2, "reduced, gathered heads");
  time(run<2, kPaired, false>, 2, "paired, scalar heads");
  time(run<3, kReduced, true>, 3, "reduced, gathered heads");
  time(run<3, kPaired, false>, 3, "paired, scalar heads");
  time(run<4, kGrouped, true>, 4, "grouped, gathered heads");
  time(run<4, kPaired, false>, 4, "paired, scalar heads");
  time(run<8, kGrouped, true>, 8, "grouped, gathered heads");
  time(run<8, kPaired, false>, 8, "paired, scalar heads");
  time(run<16, kGrouped, true>, 16, "grouped, gathered heads");
  time(run<16, kPaired, false>, 16, "paired, scalar heads");
  return 0;
}
