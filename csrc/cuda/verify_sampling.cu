// verify_sampling on CUDA: one block per request. Every thread walks the tree and takes the
// same decisions (they read the same values); the O(vocab) passes (residual, mass, sampling)
// are shared by the block; thread 0 writes the outputs.
#include <climits>

#include "adaeagle/verify_sampling.h"

namespace adaeagle {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Sum of v over the block; every thread gets the same value.
__device__ double block_sum(double v, double* warp_sums) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFullMask, v, offset);
  __syncthreads();  // earlier readers of warp_sums are done
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  return total;
}

// Sum of v over the threads before this one; *total gets the sum over all threads.
__device__ double block_exclusive_prefix(double v, double* warp_sums, double* total) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  double inclusive = v;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const double up = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  double exclusive = __shfl_up_sync(kFullMask, inclusive, 1);
  if (lane == 0) exclusive = 0.0;
  __syncthreads();
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  double before = 0.0;
  double all = 0.0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += warp_sums[w];
    all += warp_sums[w];
  }
  *total = all;
  return before + exclusive;
}

// Inverse-CDF sample over w[0, vocab) with u in [0, 1): the first index whose cumulative weight
// exceeds u * total; -1 when the total is 0. Thread k owns one contiguous chunk, summed left to
// right, so the chunk holding the threshold finds it with the same partial sums.
__device__ int64_t block_sample(const float* w, int64_t vocab, float u, double* warp_sums,
                                int* found, int* last) {
  const int64_t chunk = (vocab + kThreads - 1) / kThreads;
  const int64_t begin = min(vocab, static_cast<int64_t>(threadIdx.x) * chunk);
  const int64_t len = min(vocab - begin, chunk);
  double local = 0.0;
  for (int64_t j = 0; j < len; ++j) local += static_cast<double>(w[begin + j]);
  double total = 0.0;
  const double prefix = block_exclusive_prefix(local, warp_sums, &total);
  if (threadIdx.x == 0) {
    *found = INT_MAX;
    *last = -1;
  }
  __syncthreads();
  if (!(total > 0.0)) return -1;
  const double t = sample_threshold(u, total);
  if (len > 0 && prefix + local > t) {
    const int64_t j = first_above(w + begin, len, prefix, t);
    if (j >= 0) atomicMin(found, static_cast<int>(begin + j));
  }
  __syncthreads();
  if (*found != INT_MAX) return *found;
  // Rounding left the threshold above every partial sum: the last token of positive weight.
  const int64_t j = last_positive(w + begin, len);
  if (j >= 0) atomicMax(last, static_cast<int>(begin + j));
  __syncthreads();
  return *last;
}

__global__ void verify_sampling_kernel(
    const int64_t* __restrict__ candidates, const float* __restrict__ target_probs,
    const float* __restrict__ draft_probs, const int32_t* __restrict__ first_child,
    const int32_t* __restrict__ next_sibling, const int32_t* __restrict__ tree_indptr,
    const float* __restrict__ uniforms, int64_t num_nodes, int64_t vocab, int width, int mode,
    int32_t* __restrict__ accept_local, int32_t* __restrict__ accept_len,
    int64_t* __restrict__ out_tokens, float* __restrict__ scratch) {
  __shared__ double warp_sums[kWarps];
  __shared__ int32_t removed[kMaxTreeNodes];
  __shared__ int found;
  __shared__ int last;
  const int b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t start = tree_indptr[b];
  const int size = static_cast<int>(tree_indptr[b + 1] - start);
  int32_t* path = accept_local + static_cast<int64_t>(b) * width;
  int64_t* tokens = out_tokens + static_cast<int64_t>(b) * width;
  float* buffers[2] = {scratch + static_cast<int64_t>(b) * 2 * vocab,
                       scratch + (static_cast<int64_t>(b) * 2 + 1) * vocab};
  if (tid == 0) {
    for (int k = 0; k < width; ++k) {
      path[k] = -1;
      tokens[k] = -1;
    }
    path[0] = 0;
    accept_len[b] = 0;
  }
  if (size < 1 || size > kMaxTreeNodes) return;

  int node = 0;
  int accepted_drafts = 0;
  const float* row = nullptr;  // current target distribution p = row * inv
  float inv = 1.f;
  int num_removed = 0;  // topk: rejected sibling tokens, in `removed`
  while (true) {
    row = target_probs + (start + node) * vocab;
    inv = 1.f;
    num_removed = 0;
    if (accepted_drafts == width - 1) break;
    int child = first_child[start + node];
    if (!(child > node && child < size)) child = -1;
    int accepted = -1;
    int free_buffer = 0;
    double mass = 0.0;
    bool have_mass = false;
    while (child != -1) {
      const int64_t x = candidates[start + child];
      const bool in_vocab = x >= 0 && x < vocab;
      const float u = uniforms[start + child];
      if (mode == kVerifyTopk) {
        if (!have_mass) {
          double local = 0.0;
          for (int64_t v = tid; v < vocab; v += kThreads) local += static_cast<double>(row[v]);
          mass = block_sum(local, warp_sums);
          have_mass = true;
        }
        bool duplicate = false;
        for (int k = 0; k < num_removed; ++k) duplicate |= removed[k] == x;
        if (in_vocab && !duplicate) {
          const float px = row[x];
          if (accept_by_mass(u, px, mass)) {
            accepted = child;
            break;
          }
          if (tid == 0) removed[num_removed] = static_cast<int32_t>(x);
          ++num_removed;
          mass -= static_cast<double>(px);
          __syncthreads();
        }
      } else {
        const float* q = draft_probs + (start + child) * vocab;
        if (in_vocab && accept_by_ratio(u, mul_rn(row[x], inv), q[x])) {
          accepted = child;
          break;
        }
        float* out = buffers[free_buffer];
        double local = 0.0;
        for (int64_t v = tid; v < vocab; v += kThreads) {
          const float r = residual_prob(row[v], inv, q[v]);
          out[v] = r;
          local += static_cast<double>(r);
        }
        const double s = block_sum(local, warp_sums);
        if (s > 0.0) {  // a residual without mass (only through round-off) keeps p itself
          row = out;
          inv = inverse_mass(s);
          free_buffer ^= 1;
        }
      }
      int next = next_sibling[start + child];
      if (!(next > child && next < size)) next = -1;
      child = next;
    }
    if (accepted < 0) break;
    if (tid == 0) {
      tokens[accepted_drafts] = candidates[start + accepted];
      path[accepted_drafts + 1] = accepted;
    }
    ++accepted_drafts;
    node = accepted;
  }

  const float u = uniforms[num_nodes + b];
  int64_t token;
  if (num_removed > 0) {
    // topk: row is the target row, so both buffers are free for the row without the removed.
    float* w = buffers[0];
    for (int64_t v = tid; v < vocab; v += kThreads) w[v] = row[v];
    __syncthreads();
    if (tid < num_removed) w[removed[tid]] = 0.f;
    __syncthreads();
    token = block_sample(w, vocab, u, warp_sums, &found, &last);
    if (token < 0) token = block_sample(row, vocab, u, warp_sums, &found, &last);
  } else {
    token = block_sample(row, vocab, u, warp_sums, &found, &last);
  }
  if (tid == 0) {
    tokens[accepted_drafts] = token;
    accept_len[b] = accepted_drafts;
  }
}

}  // namespace

cudaError_t launch_verify_sampling(const int64_t* candidates, const float* target_probs,
                                   const float* draft_probs, const int32_t* first_child,
                                   const int32_t* next_sibling, const int32_t* tree_indptr,
                                   const float* uniforms, int batch, int64_t num_nodes,
                                   int64_t vocab, int width, int mode, int32_t* accept_local,
                                   int32_t* accept_len, int64_t* out_tokens, float* scratch,
                                   cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  verify_sampling_kernel<<<batch, kThreads, 0, stream>>>(
      candidates, target_probs, draft_probs, first_child, next_sibling, tree_indptr, uniforms,
      num_nodes, vocab, width, mode, accept_local, accept_len, out_tokens, scratch);
  return cudaGetLastError();
}

}  // namespace adaeagle
