// verify_greedy on CUDA: one thread per request runs the shared walk.
#include <cstdint>

#include "adaeagle/verify_greedy.h"

namespace adaeagle {
namespace {

constexpr int kThreads = 128;

__global__ void verify_greedy_kernel(const int64_t* __restrict__ candidates,
                                     const int64_t* __restrict__ target_argmax,
                                     const int32_t* __restrict__ first_child,
                                     const int32_t* __restrict__ next_sibling,
                                     const int32_t* __restrict__ tree_indptr, int batch,
                                     int64_t num_nodes, int width,
                                     int32_t* __restrict__ accept_local,
                                     int32_t* __restrict__ accept_len,
                                     int64_t* __restrict__ out_tokens) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int64_t start = min(max(static_cast<int64_t>(tree_indptr[b]), int64_t{0}), num_nodes);
  const int64_t end = min(max(static_cast<int64_t>(tree_indptr[b + 1]), start), num_nodes);
  int bad_node = 0;
  verify_greedy_walk(candidates + start, target_argmax + start, first_child + start,
                     next_sibling + start, static_cast<int>(end - start), width,
                     accept_local + static_cast<int64_t>(b) * width, accept_len + b,
                     out_tokens + static_cast<int64_t>(b) * width, &bad_node);
}

}  // namespace

cudaError_t launch_verify_greedy(const int64_t* candidates, const int64_t* target_argmax,
                                 const int32_t* first_child, const int32_t* next_sibling,
                                 const int32_t* tree_indptr, int batch, int64_t num_nodes,
                                 int width, int32_t* accept_local, int32_t* accept_len,
                                 int64_t* out_tokens, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  const int blocks = (batch + kThreads - 1) / kThreads;
  verify_greedy_kernel<<<blocks, kThreads, 0, stream>>>(
      candidates, target_argmax, first_child, next_sibling, tree_indptr, batch, num_nodes, width,
      accept_local, accept_len, out_tokens);
  return cudaGetLastError();
}

}  // namespace adaeagle
