#include "cpu/verify_greedy.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "adaeagle/verify_greedy.h"

namespace adaeagle::cpu {
namespace {

struct WalkFault {
  VerifyStatus status = kVerifyOk;
  int node = 0;
};

std::string describe(const WalkFault& fault, int64_t request, int size,
                     const int32_t* first_child, const int32_t* next_sibling) {
  const std::string at = "verify_greedy: request " + std::to_string(request) + ": ";
  const std::string node = std::to_string(fault.node);
  const std::string range = " (tree of " + std::to_string(size) + " nodes)";
  switch (fault.status) {
    case kVerifyEmptyTree:
      return at + "tree has 0 nodes (tree_indptr), expected at least the root";
    case kVerifyBadChild:
      return at + "first_child[" + node + "]=" + std::to_string(first_child[fault.node]) +
             ", expected -1 or a local id in (" + node + ", " + std::to_string(size) + ")" +
             range;
    case kVerifyBadSibling:
      return at + "next_sibling[" + node + "]=" + std::to_string(next_sibling[fault.node]) +
             ", expected -1 or a local id in (" + node + ", " + std::to_string(size) + ")" +
             range;
    default:
      return at + "invalid tree";
  }
}

}  // namespace

void verify_greedy(const int64_t* candidates, const int64_t* target_argmax,
                   const int32_t* first_child, const int32_t* next_sibling,
                   const int32_t* tree_indptr, int64_t batch, int64_t num_nodes, int64_t width,
                   int32_t* accept_local, int32_t* accept_len, int64_t* out_tokens) {
  TORCH_CHECK(tree_indptr[0] == 0, "verify_greedy: tree_indptr[0] must be 0, got ",
              tree_indptr[0]);
  TORCH_CHECK(tree_indptr[batch] == num_nodes, "verify_greedy: tree_indptr[-1] must equal ",
              "candidates.numel()=", num_nodes, ", got ", tree_indptr[batch]);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(tree_indptr[b + 1] >= tree_indptr[b], "verify_greedy: tree_indptr must be ",
                "non-decreasing, got tree_indptr[", b + 1, "]=", tree_indptr[b + 1], " < ",
                tree_indptr[b]);
  }
  std::vector<WalkFault> faults(batch);
  at::parallel_for(0, batch, 256, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = tree_indptr[b];
      const int size = static_cast<int>(tree_indptr[b + 1] - start);
      faults[b].status = verify_greedy_walk(
          candidates + start, target_argmax + start, first_child + start, next_sibling + start,
          size, static_cast<int>(width), accept_local + b * width, accept_len + b,
          out_tokens + b * width, &faults[b].node);
    }
  });
  for (int64_t b = 0; b < batch; ++b) {
    if (faults[b].status == kVerifyOk) continue;
    const int64_t start = tree_indptr[b];
    TORCH_CHECK(false, describe(faults[b], b, static_cast<int>(tree_indptr[b + 1] - start),
                                first_child + start, next_sibling + start));
  }
}

}  // namespace adaeagle::cpu
