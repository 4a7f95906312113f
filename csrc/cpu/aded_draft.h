// CPU entry points of the ADED draft search (raw pointers; shapes as in adaeagle_ext/ops.py).
// CPU only: the search is a short, branchy, sequential walk over a table in host memory.
#pragma once

#include <cstdint>

#include "adaeagle/aded_search.h"

namespace adaeagle::cpu {

// Runs aded::aded_search with a thread-local workspace; raises a c10::Error naming the bad
// table or overlay when their rows are inconsistent.
void aded_draft(const aded::RowTable& table, const aded::RowTable& overlay,
                const int64_t* context, int64_t context_len, const aded::SearchParams& params,
                int32_t* parents, int64_t* tokens, int32_t* num_nodes);

// Merges ranked paths into a draft tree (aded::paths_to_tree).
void aded_paths_to_tree(const int64_t* paths, const int32_t* path_lens, int64_t num_paths,
                        int64_t width, int64_t root_token, int64_t max_nodes, int32_t* parents,
                        int64_t* tokens, int32_t* num_nodes);

}  // namespace adaeagle::cpu
