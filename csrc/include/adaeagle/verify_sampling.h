// verify_sampling: the per-step rules shared by the CPU loop and the CUDA kernel.
//
// At a tree node the verifier holds the current target distribution p as a row r and a scale
// inv (p = r * inv, rounded to float32): at first r is the node's target row and inv = 1; after
// a rejected sibling in the recursive modes r is the residual max(p - q, 0) and inv = 1 / sum(r).
// Every float32 operation here is a single rounded IEEE operation (never fused into an FMA), and
// the acceptance tests compare exact double products, so the CPU kernel, the CUDA kernel and
// adaeagle_ext/ref.py take the same decisions for the same uniforms.
#pragma once

#include "adaeagle/common.h"

namespace adaeagle {

enum VerifyMode : int32_t {
  kVerifyChain = 0,          // one child per node, draft probabilities given
  kVerifyTreeRecursive = 1,  // SpecInfer multi-round rejection, one draft row per child
  kVerifyTopk = 2            // deterministic proposals: accept w.p. p(x), remove x on rejection
};

// The largest vocabulary the kernels accept (the CPU sampler keeps one partial sum per chunk of
// kSampleChunk tokens on the stack).
constexpr int64_t kSampleChunk = 1024;
constexpr int64_t kMaxSampleChunks = 4096;
constexpr int64_t kMaxVocab = kSampleChunk * kMaxSampleChunks;

ADAEAGLE_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

ADAEAGLE_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// Ratio test of the chain and tree_recursive modes: accepts with probability
// min(1, p(x) / q(x)) for u uniform in [0, 1). The product of two floats is exact in double.
// Strict, so a token the target gives probability 0 is never accepted (even when u = 0).
ADAEAGLE_HD bool accept_by_ratio(float u, float px, float qx) {
  return static_cast<double>(u) * static_cast<double>(qx) < static_cast<double>(px);
}

// Test of the topk mode: accepts with probability p(x) / mass, where mass is what remains of
// the target row after removing the rejected earlier siblings.
ADAEAGLE_HD bool accept_by_mass(float u, float px, double mass) {
  return static_cast<double>(u) * mass < static_cast<double>(px);
}

// One element of the residual max(p - q, 0) with p = r * inv. The product must be rounded
// before the subtraction: CUDA uses the _rn intrinsics; clang is told below; GCC never
// contracts on x86-64 without -mfma (the default build), and on targets with a native FMA
// (aarch64) the build should pass -ffp-contract=off to keep CPU results equal to ref.py.
ADAEAGLE_HD float residual_prob(float r, float inv, float q) {
#if defined(__clang__) && !defined(__CUDA_ARCH__)
#pragma clang fp contract(off)
#endif
  const float d = sub_rn(mul_rn(r, inv), q);
  return d > 0.f ? d : 0.f;
}

// The scale that normalises a residual of (double) mass s > 0.
ADAEAGLE_HD float inverse_mass(double s) {
  return static_cast<float>(1.0 / s);
}

// Inverse-CDF target: the sampled index is the first v whose cumulative weight exceeds u * total.
ADAEAGLE_HD double sample_threshold(float u, double total) {
  return static_cast<double>(u) * total;
}

// Within one chunk of weights w[0, n) preceded by cumulative weight `prefix`: the first j with
// prefix + (w[0] + ... + w[j]) > t, summed left to right in double; -1 if there is none.
ADAEAGLE_HD int64_t first_above(const float* w, int64_t n, double prefix, double t) {
  double cum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    cum += static_cast<double>(w[j]);
    if (prefix + cum > t) return j;
  }
  return -1;
}

// The last j in [0, n) with w[j] > 0, or -1: the sample when rounding leaves u * total above
// every partial sum.
ADAEAGLE_HD int64_t last_positive(const float* w, int64_t n) {
  for (int64_t j = n - 1; j >= 0; --j) {
    if (w[j] > 0.f) return j;
  }
  return -1;
}

#if defined(ADAEAGLE_WITH_CUDA) || defined(__CUDACC__)
}  // namespace adaeagle
#include <cuda_runtime_api.h>
namespace adaeagle {
// Launches verify_sampling on `stream`, one block per request. Arguments as in the CPU entry
// point (draft_probs may be null in topk mode). Data errors are not reported: a link outside the
// tree ends the walk, a token outside the vocabulary is rejected, a branching tree in chain mode
// is verified as in tree_recursive mode, and a request whose final distribution has no mass
// emits token -1 (validate=True in the Python wrapper runs the CPU checks first).
cudaError_t launch_verify_sampling(const int64_t* candidates, const float* target_probs,
                                   const float* draft_probs, const int32_t* first_child,
                                   const int32_t* next_sibling, const int32_t* tree_indptr,
                                   const float* uniforms, int batch, int64_t num_nodes,
                                   int64_t vocab, int width, int mode, int32_t* accept_local,
                                   int32_t* accept_len, int64_t* out_tokens, float* scratch,
                                   cudaStream_t stream);
#endif

}  // namespace adaeagle
