// Host test of the torch-free build_tree logic on a hand-built tree: node 0 has children
// 1, 2, 3; node 1 has children 4, 5; node 3 has child 6.
#include "adaeagle/build_tree.h"
#include "check.h"

int main() {
  using namespace adaeagle;
  const int32_t parents[] = {-1, 0, 0, 0, 1, 1, 3};
  const int size = 7;
  const uint64_t rows[] = {0b1, 0b11, 0b101, 0b1001, 0b10011, 0b100011, 0b1001001};
  const int depths[] = {0, 1, 1, 1, 2, 2, 2};
  const int32_t first_child[] = {1, 4, -1, 6, -1, -1, -1};
  const int32_t next_sibling[] = {-1, 2, 3, -1, 5, -1, -1};
  for (int i = 0; i < size; ++i) {
    uint64_t row = 0;
    int depth = -1;
    CHECK_EQ(tree_ancestor_row(parents, i, &row, &depth), kTreeOk);
    CHECK_EQ(row, rows[i]);
    CHECK_EQ(depth, depths[i]);
    int32_t child = 0, sibling = 0;
    tree_child_sibling(parents, size, i, &child, &sibling);
    CHECK_EQ(child, first_child[i]);
    CHECK_EQ(sibling, next_sibling[i]);
  }
  CHECK_EQ(tree_leaf_slot(first_child, 2), 0);
  CHECK_EQ(tree_leaf_slot(first_child, 5), 2);
  CHECK_EQ(tree_leaf_slot(first_child, 7), 4);
  int32_t path[4];
  tree_write_path(rows[6], 4, path);
  CHECK_EQ(path[0], 0);
  CHECK_EQ(path[1], 3);
  CHECK_EQ(path[2], 6);
  CHECK_EQ(path[3], -1);

  const int32_t bad[] = {-1, 0, 2};
  uint64_t row = 0;
  int depth = 0;
  CHECK_EQ(tree_ancestor_row(bad, 2, &row, &depth), kTreeBadParent);
  CHECK_EQ(bits_to_i64(~uint64_t{0}), -1);
  return finish("test_build_tree_logic");
}
