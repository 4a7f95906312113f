#include "cpu/build_tree.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "adaeagle/build_tree.h"

namespace adaeagle::cpu {
namespace {

struct TreeFault {
  TreeStatus status = kTreeOk;
  int node = 0;
  int value = 0;
};

TreeFault build_one_tree(const int32_t* parents, int size, int32_t prefix_len, int max_depth,
                         int max_leaves, int64_t* mask_bits, int32_t* depth, int64_t* positions,
                         int32_t* first_child, int32_t* next_sibling, int32_t* leaf_paths,
                         int32_t* num_leaves) {
  if (size < 1 || size > kMaxTreeNodes) return {kTreeBadSize, 0, size};
  if (parents[0] != -1) return {kTreeBadRoot, 0, parents[0]};
  uint64_t rows[kMaxTreeNodes];
  for (int i = 0; i < size; ++i) {
    int d = 0;
    if (tree_ancestor_row(parents, i, &rows[i], &d) != kTreeOk) {
      return {kTreeBadParent, i, parents[i]};
    }
    if (d > max_depth) return {kTreeTooDeep, i, d};
    mask_bits[i] = bits_to_i64(rows[i]);
    depth[i] = d;
    positions[i] = static_cast<int64_t>(prefix_len) + d;
    tree_child_sibling(parents, size, i, &first_child[i], &next_sibling[i]);
  }
  const int width = max_depth + 1;
  int leaves = 0;
  for (int i = 0; i < size; ++i) {
    if (first_child[i] >= 0) continue;
    if (leaves >= max_leaves) return {kTreeTooManyLeaves, i, leaves + 1};
    tree_write_path(rows[i], width, leaf_paths + static_cast<int64_t>(leaves) * width);
    ++leaves;
  }
  for (int64_t k = static_cast<int64_t>(leaves) * width; k < int64_t{max_leaves} * width; ++k) {
    leaf_paths[k] = -1;
  }
  *num_leaves = leaves;
  return {};
}

std::string describe(const TreeFault& fault, int64_t request, int64_t max_depth,
                     int64_t max_leaves) {
  const std::string where = "build_tree: request " + std::to_string(request) + ": ";
  switch (fault.status) {
    case kTreeBadSize:
      return where + "tree has " + std::to_string(fault.value) + " nodes, expected 1 to " +
             std::to_string(kMaxTreeNodes) + " (tree_indptr)";
    case kTreeBadRoot:
      return where + "parents[0] of the root is " + std::to_string(fault.value) +
             ", expected -1";
    case kTreeBadParent:
      return where + "node " + std::to_string(fault.node) + " has parent " +
             std::to_string(fault.value) + ", expected 0 <= parent < node (topological order)";
    case kTreeTooDeep:
      return where + "node " + std::to_string(fault.node) + " has depth " +
             std::to_string(fault.value) + " > max_depth=" + std::to_string(max_depth);
    case kTreeTooManyLeaves:
      return where + "tree has more than max_leaves=" + std::to_string(max_leaves) + " leaves";
    default:
      return where + "invalid tree";
  }
}

}  // namespace

void build_tree(const int32_t* parents, const int32_t* tree_indptr, const int32_t* prefix_lens,
                int64_t batch, int64_t num_nodes, int64_t max_depth, int64_t max_leaves,
                int64_t* mask_bits, int32_t* depth, int64_t* positions, int32_t* first_child,
                int32_t* next_sibling, int32_t* leaf_paths, int32_t* num_leaves) {
  TORCH_CHECK(tree_indptr[0] == 0, "build_tree: tree_indptr[0] must be 0, got ", tree_indptr[0]);
  TORCH_CHECK(tree_indptr[batch] == num_nodes, "build_tree: tree_indptr[-1] must equal ",
              "parents.numel()=", num_nodes, ", got ", tree_indptr[batch]);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(tree_indptr[b + 1] >= tree_indptr[b], "build_tree: tree_indptr must be ",
                "non-decreasing, got tree_indptr[", b + 1, "]=", tree_indptr[b + 1], " < ",
                tree_indptr[b]);
    TORCH_CHECK(prefix_lens[b] >= 0, "build_tree: prefix_lens[", b, "]=", prefix_lens[b],
                " must be >= 0");
  }
  std::vector<TreeFault> faults(batch);
  const int64_t path_stride = max_leaves * (max_depth + 1);
  at::parallel_for(0, batch, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = tree_indptr[b];
      faults[b] = build_one_tree(
          parents + start, static_cast<int>(tree_indptr[b + 1] - start), prefix_lens[b],
          static_cast<int>(max_depth), static_cast<int>(max_leaves), mask_bits + start,
          depth + start, positions + start, first_child + start, next_sibling + start,
          leaf_paths + b * path_stride, num_leaves + b);
    }
  });
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(faults[b].status == kTreeOk, describe(faults[b], b, max_depth, max_leaves));
  }
}

}  // namespace adaeagle::cpu
