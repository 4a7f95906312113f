// build_tree: per-node logic shared by the CPU loop and the CUDA kernel.
//
// A request's tree is a parents array in topological order: node 0 is the root (parent -1) and
// 0 <= parents[i] < i for every other node. Each function below looks at one node and reads
// only the request's parents array, so every node can be processed independently.
#pragma once

#include "adaeagle/common.h"

namespace adaeagle {

enum TreeStatus : int32_t {
  kTreeOk = 0,
  kTreeBadSize = 1,       // 0 nodes or more than kMaxTreeNodes
  kTreeBadRoot = 2,       // parents[0] != -1
  kTreeBadParent = 3,     // parents[i] outside [0, i)
  kTreeTooDeep = 4,       // depth > max_depth
  kTreeTooManyLeaves = 5  // more leaves than max_leaves
};

// Ancestor row of node i (bit j set when j is i or an ancestor of i) and its depth.
// Returns kTreeBadParent when the walk meets a parent outside [0, child).
ADAEAGLE_HD TreeStatus tree_ancestor_row(const int32_t* parents, int i, uint64_t* row, int* depth) {
  uint64_t bits = uint64_t{1} << i;
  int d = 0;
  int node = i;
  while (node > 0) {
    const int parent = parents[node];
    if (parent < 0 || parent >= node) return kTreeBadParent;
    bits |= uint64_t{1} << parent;
    node = parent;
    ++d;
  }
  *row = bits;
  *depth = d;
  return kTreeOk;
}

// First child and next sibling of node i (local ids, -1 for none). Children and siblings are
// visited in ascending index order.
ADAEAGLE_HD void tree_child_sibling(const int32_t* parents, int size, int i, int32_t* first_child,
                                    int32_t* next_sibling) {
  int32_t child = -1;
  int32_t sibling = -1;
  const int32_t parent = i > 0 ? parents[i] : -2;
  for (int j = size - 1; j > i; --j) {
    if (parents[j] == i) child = j;
    if (parents[j] == parent) sibling = j;
  }
  *first_child = child;
  *next_sibling = sibling;
}

// Number of leaves among nodes [0, i): node i's slot in leaf_paths when it is a leaf.
// is_leaf[j] must be known for j < i, which the caller gets from first_child.
ADAEAGLE_HD int tree_leaf_slot(const int32_t* first_child, int i) {
  int slot = 0;
  for (int j = 0; j < i; ++j) slot += first_child[j] < 0;
  return slot;
}

// Writes the root-to-leaf path of a node with ancestor row `row` into path[0 .. width),
// padding with -1. Ancestors always have smaller ids than their descendants, so ascending
// bit order is root-to-leaf order.
ADAEAGLE_HD void tree_write_path(uint64_t row, int width, int32_t* path) {
  int k = 0;
  for (int j = 0; j < kMaxTreeNodes && k < width; ++j) {
    if ((row >> j) & 1) path[k++] = j;
  }
  for (; k < width; ++k) path[k] = -1;
}

#if defined(ADAEAGLE_WITH_CUDA) || defined(__CUDACC__)
}  // namespace adaeagle
#include <cuda_runtime_api.h>
namespace adaeagle {
// Launches build_tree on `stream`. Arguments as in the CPU entry point; the outputs are
// written for every node whose tree is valid (invalid trees are the caller's to validate).
cudaError_t launch_build_tree(const int32_t* parents, const int32_t* tree_indptr,
                              const int32_t* prefix_lens, int batch, int max_depth,
                              int max_leaves, int64_t* mask_bits, int32_t* depth,
                              int64_t* positions, int32_t* first_child, int32_t* next_sibling,
                              int32_t* leaf_paths, int32_t* num_leaves, cudaStream_t stream);
#endif

}  // namespace adaeagle
