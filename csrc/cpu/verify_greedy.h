// CPU entry point of verify_greedy (raw pointers; shapes as in adaeagle_ext/ops.py).
#pragma once

#include <cstdint>

namespace adaeagle::cpu {

// Checks tree_indptr, walks every request and raises a c10::Error naming the request and node
// when a visited first_child / next_sibling link is out of range or not strictly forward.
void verify_greedy(const int64_t* candidates, const int64_t* target_argmax,
                   const int32_t* first_child, const int32_t* next_sibling,
                   const int32_t* tree_indptr, int64_t batch, int64_t num_nodes, int64_t width,
                   int32_t* accept_local, int32_t* accept_len, int64_t* out_tokens);

}  // namespace adaeagle::cpu
