// CPU entry point of verify_sampling (raw pointers; shapes as in adaeagle_ext/ops.py).
#pragma once

#include <cstdint>

namespace adaeagle::cpu {

// Walks each request's tree with the lossless rejection rule of `mode` (VerifyMode), consuming
// uniforms[node] for each tested child and uniforms[num_nodes + b] for request b's final token.
// draft_probs may be null in topk mode. scratch holds 2 rows of `vocab` floats per request
// (the residual distributions). Raises a c10::Error naming the request and node on bad data: a
// tree of 0 or more than 64 nodes, a child/sibling link that is not a later node of the same
// tree, a tested token outside [0, vocab), a branching tree in chain mode, or a final
// distribution without positive mass.
void verify_sampling(const int64_t* candidates, const float* target_probs,
                     const float* draft_probs, const int32_t* first_child,
                     const int32_t* next_sibling, const int32_t* tree_indptr,
                     const float* uniforms, int64_t batch, int64_t num_nodes, int64_t vocab,
                     int64_t width, int64_t mode, int32_t* accept_local, int32_t* accept_len,
                     int64_t* out_tokens, float* scratch);

}  // namespace adaeagle::cpu
