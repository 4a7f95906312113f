// Host test of the torch-free ADED search: trie building from ranked paths, row merging with
// the overlay, and a search over a table with one dominant continuation.
#include "adaeagle/aded_search.h"
#include "check.h"

int main() {
  using namespace adaeagle::aded;
  // paths_to_tree: duplicates and shared prefixes once, trimmed at max_nodes
  const int64_t paths[] = {5, 6, 7, -1, 5, 6, 8, -1, 5, 6, 7, -1, 9, -1, -1, -1, 5, 10, 11, 12};
  const int32_t lens[] = {3, 3, 3, 1, 4};
  int32_t parents[8];
  int64_t tokens[8];
  CHECK_EQ(paths_to_tree(paths, lens, 5, 4, 1, 6, parents, tokens), 6);
  const int32_t want_parents[] = {-1, 0, 1, 2, 2, 0, -1, -1};
  const int64_t want_tokens[] = {1, 5, 6, 7, 8, 9, -1, -1};
  for (int i = 0; i < 6; ++i) {
    CHECK_EQ(parents[i], want_parents[i]);
    CHECK_EQ(tokens[i], want_tokens[i]);
  }

  // table: (1,2) -> 3 (0.75), 4 (0.25); (2,3) -> 5; (3,5) -> 6; (5,6) -> 7
  const int64_t keys[] = {pack_bigram(1, 2), pack_bigram(2, 3), pack_bigram(3, 5),
                          pack_bigram(5, 6)};
  const int32_t offsets[] = {0, 2, 3, 4, 5};
  const int32_t succ[] = {3, 4, 5, 6, 7};
  const float vals[] = {0.75f, 0.25f, 1.0f, 1.0f, 1.0f};
  const RowTable table{keys, offsets, succ, vals, 4, 5};
  // overlay: (1,2) -> 4 raised to 2.0, 9 added at 0.04
  const int64_t okeys[] = {pack_bigram(1, 2)};
  const int32_t ooffsets[] = {0, 2};
  const int32_t osucc[] = {9, 4};
  const float ovals[] = {0.04f, 2.0f};
  const RowTable overlay{okeys, ooffsets, osucc, ovals, 1, 2};
  std::vector<Successor> row;
  CHECK_EQ(gather_row(table, overlay, 1, 2, &row), kSearchOk);
  CHECK_EQ(row.size(), size_t{3});
  CHECK_EQ(row[0].token, 4);
  CHECK_EQ(row[1].token, 3);
  CHECK_EQ(row[2].token, 9);

  const RowTable none{};
  const int64_t context[] = {0, 1, 2};
  SearchParams params;
  SearchWorkspace ws;
  int32_t out_parents[64];
  int64_t out_tokens[64];
  int32_t n = 0;
  CHECK_EQ(aded_search(table, none, context, 3, params, &ws, out_parents, out_tokens, &n),
           kSearchOk);
  // 3 5 6 + greedy 7, and 4 alone: root + 4 + 1 nodes
  CHECK_EQ(n, 6);
  CHECK_EQ(out_tokens[1], 3);
  CHECK_EQ(out_tokens[4], 7);
  CHECK_EQ(out_parents[4], 3);
  CHECK_EQ(out_tokens[5], 4);
  // an unseen bigram: the fallback token under the root
  const int64_t unseen[] = {7, 7};
  CHECK_EQ(aded_search(table, none, unseen, 2, params, &ws, out_parents, out_tokens, &n),
           kSearchOk);
  CHECK_EQ(n, 2);
  CHECK_EQ(out_tokens[1], 100);
  return finish("test_aded_search_logic");
}
