// verify_greedy: the greedy tree walk shared by the CPU loop and the CUDA kernel.
//
// From the root, accept the lowest-index child whose token equals the target's argmax after
// the current node; stop when none matches or when the path is full. Children are read from
// the first-child / next-sibling links of build_tree, which list them in ascending index
// order, so the first match on the sibling list is the lowest-index one. Every link is
// checked before it is followed (in range, and strictly forward so the walk cannot loop), so
// garbage links never cause an out-of-bounds read.
#pragma once

#include "adaeagle/common.h"

namespace adaeagle {

enum VerifyStatus : int32_t {
  kVerifyOk = 0,
  kVerifyEmptyTree = 1,   // the request has no root
  kVerifyBadChild = 2,    // first_child[node] outside {-1} U (node, size)
  kVerifyBadSibling = 3   // next_sibling[child] outside {-1} U (child, size)
};

// One step from `node` (local id) of a tree of `size` nodes whose arrays start at the
// request's first node. Sets *accepted to the lowest-index child with token `want`, or -1.
// On a bad link, *bad_node is the node whose link is wrong.
ADAEAGLE_HD VerifyStatus verify_greedy_step(const int64_t* candidates,
                                            const int32_t* first_child,
                                            const int32_t* next_sibling, int size, int node,
                                            int64_t want, int* accepted, int* bad_node) {
  *accepted = -1;
  int child = first_child[node];
  if (child != -1 && (child <= node || child >= size)) {
    *bad_node = node;
    return kVerifyBadChild;
  }
  while (child != -1) {
    if (candidates[child] == want) {
      *accepted = child;
      return kVerifyOk;
    }
    const int sibling = next_sibling[child];
    if (sibling != -1 && (sibling <= child || sibling >= size)) {
      *bad_node = child;
      return kVerifyBadSibling;
    }
    child = sibling;
  }
  return kVerifyOk;
}

// Walks one request's tree and writes its outputs: accept_local[0 .. width) (root first, -1
// padded), *accept_len (accepted drafts, at most width - 1) and out_tokens[0 .. width)
// (accepted drafts then the bonus token, -1 padded). On a bad link the walk stops there as if
// no child matched, so the outputs stay well formed; the status says what went wrong.
ADAEAGLE_HD VerifyStatus verify_greedy_walk(const int64_t* candidates,
                                            const int64_t* target_argmax,
                                            const int32_t* first_child,
                                            const int32_t* next_sibling, int size, int width,
                                            int32_t* accept_local, int32_t* accept_len,
                                            int64_t* out_tokens, int* bad_node) {
  for (int k = 0; k < width; ++k) {
    accept_local[k] = -1;
    out_tokens[k] = -1;
  }
  *accept_len = 0;
  if (size < 1) return kVerifyEmptyTree;
  VerifyStatus status = kVerifyOk;
  int node = 0;
  int accepted = 0;
  accept_local[0] = 0;
  while (accepted < width - 1) {
    const int64_t want = target_argmax[node];
    int child = -1;
    status = verify_greedy_step(candidates, first_child, next_sibling, size, node, want, &child,
                                bad_node);
    if (child < 0) break;
    out_tokens[accepted] = want;
    ++accepted;
    accept_local[accepted] = child;
    node = child;
  }
  out_tokens[accepted] = target_argmax[node];
  *accept_len = accepted;
  return status;
}

#if defined(ADAEAGLE_WITH_CUDA) || defined(__CUDACC__)
}  // namespace adaeagle
#include <cuda_runtime_api.h>
namespace adaeagle {
// Launches verify_greedy on `stream`, one thread per request. Request ranges from tree_indptr
// are clipped to [0, num_nodes) so garbage offsets never read out of bounds; bad trees give
// well-formed but meaningless outputs (the caller validates).
cudaError_t launch_verify_greedy(const int64_t* candidates, const int64_t* target_argmax,
                                 const int32_t* first_child, const int32_t* next_sibling,
                                 const int32_t* tree_indptr, int batch, int64_t num_nodes,
                                 int width, int32_t* accept_local, int32_t* accept_len,
                                 int64_t* out_tokens, cudaStream_t stream);
#endif

}  // namespace adaeagle
