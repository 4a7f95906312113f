// CPU entry point of build_tree (raw pointers; shapes as in adaeagle_ext/ops.py).
#pragma once

#include <cstdint>

namespace adaeagle::cpu {

// Validates every tree (size, root, parent order, depth, leaf count) and raises a
// c10::Error naming the request and node on the first violation.
void build_tree(const int32_t* parents, const int32_t* tree_indptr, const int32_t* prefix_lens,
                int64_t batch, int64_t num_nodes, int64_t max_depth, int64_t max_leaves,
                int64_t* mask_bits, int32_t* depth, int64_t* positions, int32_t* first_child,
                int32_t* next_sibling, int32_t* leaf_paths, int32_t* num_leaves);

}  // namespace adaeagle::cpu
