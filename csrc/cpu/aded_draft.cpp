#include "cpu/aded_draft.h"

#include <c10/util/Exception.h>

namespace adaeagle::cpu {

void aded_draft(const aded::RowTable& table, const aded::RowTable& overlay,
                const int64_t* context, int64_t context_len, const aded::SearchParams& params,
                int32_t* parents, int64_t* tokens, int32_t* num_nodes) {
  thread_local aded::SearchWorkspace workspace;
  const aded::SearchStatus status = aded::aded_search(table, overlay, context, context_len,
                                                      params, &workspace, parents, tokens,
                                                      num_nodes);
  TORCH_CHECK(status != aded::kSearchBadTable,
              "aded_draft: table_offsets are inconsistent (a row is decreasing or runs past "
              "table_succ); was the table file corrupted?");
  TORCH_CHECK(status != aded::kSearchBadOverlay,
              "aded_draft: online_offsets are inconsistent (a row is decreasing or runs past "
              "online_succ)");
  TORCH_CHECK(status != aded::kSearchBadToken,
              "aded_draft: a successor id in table_succ or online_succ is negative");
}

void aded_paths_to_tree(const int64_t* paths, const int32_t* path_lens, int64_t num_paths,
                        int64_t width, int64_t root_token, int64_t max_nodes, int32_t* parents,
                        int64_t* tokens, int32_t* num_nodes) {
  for (int64_t p = 0; p < num_paths; ++p) {
    TORCH_CHECK(path_lens[p] >= 0 && path_lens[p] <= width, "aded_paths_to_tree: path_lens[",
                p, "]=", path_lens[p], " must be in [0, ", width, "]");
    for (int64_t s = 0; s < path_lens[p]; ++s) {
      TORCH_CHECK(paths[p * width + s] >= 0, "aded_paths_to_tree: paths[", p, ", ", s, "]=",
                  paths[p * width + s], " is not a token id");
    }
  }
  *num_nodes = aded::paths_to_tree(paths, path_lens, static_cast<int>(num_paths),
                                   static_cast<int>(width), root_token,
                                   static_cast<int>(max_nodes), parents, tokens);
}

}  // namespace adaeagle::cpu
