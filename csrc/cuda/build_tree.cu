// build_tree on CUDA: one block per request, one thread per node.
#include "adaeagle/build_tree.h"

namespace adaeagle {
namespace {

__global__ void build_tree_kernel(const int32_t* __restrict__ parents,
                                  const int32_t* __restrict__ tree_indptr,
                                  const int32_t* __restrict__ prefix_lens, int max_depth,
                                  int max_leaves, int64_t* __restrict__ mask_bits,
                                  int32_t* __restrict__ depth, int64_t* __restrict__ positions,
                                  int32_t* __restrict__ first_child,
                                  int32_t* __restrict__ next_sibling,
                                  int32_t* __restrict__ leaf_paths,
                                  int32_t* __restrict__ num_leaves) {
  __shared__ int32_t s_parents[kMaxTreeNodes];
  __shared__ int32_t s_first_child[kMaxTreeNodes];
  const int b = blockIdx.x;
  const int i = threadIdx.x;
  const int start = tree_indptr[b];
  // Oversized trees are clipped so nothing is read or written out of bounds; validate=True in
  // the Python wrapper reports them.
  const int size = min(tree_indptr[b + 1] - start, kMaxTreeNodes);
  const int width = max_depth + 1;
  int32_t* paths = leaf_paths + static_cast<int64_t>(b) * max_leaves * width;
  if (i < size) s_parents[i] = parents[start + i];
  __syncthreads();

  uint64_t row = 0;
  int d = 0;
  bool ok = false;
  if (i < size) {
    ok = tree_ancestor_row(s_parents, i, &row, &d) == kTreeOk;
    int32_t child, sibling;
    tree_child_sibling(s_parents, size, i, &child, &sibling);
    s_first_child[i] = child;
    mask_bits[start + i] = bits_to_i64(row);
    depth[start + i] = ok ? d : -1;
    positions[start + i] = static_cast<int64_t>(prefix_lens[b]) + d;
    first_child[start + i] = child;
    next_sibling[start + i] = sibling;
  }
  for (int k = i; k < max_leaves * width; k += blockDim.x) paths[k] = -1;
  __syncthreads();

  if (i < size && ok && s_first_child[i] < 0) {
    const int slot = tree_leaf_slot(s_first_child, i);
    if (slot < max_leaves) tree_write_path(row, width, paths + static_cast<int64_t>(slot) * width);
  }
  if (i == 0) num_leaves[b] = size > 0 ? tree_leaf_slot(s_first_child, size) : 0;
}

}  // namespace

cudaError_t launch_build_tree(const int32_t* parents, const int32_t* tree_indptr,
                              const int32_t* prefix_lens, int batch, int max_depth,
                              int max_leaves, int64_t* mask_bits, int32_t* depth,
                              int64_t* positions, int32_t* first_child, int32_t* next_sibling,
                              int32_t* leaf_paths, int32_t* num_leaves, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  build_tree_kernel<<<batch, kMaxTreeNodes, 0, stream>>>(
      parents, tree_indptr, prefix_lens, max_depth, max_leaves, mask_bits, depth, positions,
      first_child, next_sibling, leaf_paths, num_leaves);
  return cudaGetLastError();
}

}  // namespace adaeagle
