// ADED draft search (arXiv 2407.12021, §4 of research/algorithms.md): an MCTS over a tri-gram
// table that builds a draft tree. Host-only, torch-free; adaeagle_ext/ref.py holds the same
// algorithm in Python (same RNG, same arithmetic, so the two agree exactly).
//
// Tables are CSR rows keyed by the bigram (t1 << 32 | t2), keys strictly ascending. The search
// reads the stored table and a small per-generation overlay (same layout) whose entries replace
// the stored value of the same successor or add a new one. A row is then sorted by value
// descending, ties by smaller token id.
//
// One call: root state = the last two context tokens (node 0 = the last one). Each iteration
//   select:  descend through expanded nodes by PUCT
//            Q/N + (c1 + ln((Np + c2 + 1) / c2)) * P * sqrt(Np) / (1 + N), unvisited = +inf;
//   expand:  a node above the depth limit gets a child for every successor of its row, and the
//            iteration continues from the last child created;
//   rollout: sample successors from the row (proportional to value) until path length max_len
//            (root counted); reward = 1 + the sum of the sampled values;
//   backup:  N += 1, Q += reward along the path.
// Then the top_paths nodes by visits (ties: created first) give root-to-node paths, each extended
// greedily by one token (the row's best successor), merged into a trie (shared prefixes once) of
// at most max_nodes nodes including the root. No path at all: one fallback token under the root.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace adaeagle::aded {

enum SearchStatus : int32_t {
  kSearchOk = 0,
  kSearchBadTable = 1,    // a row's offsets are decreasing or past the entries
  kSearchBadOverlay = 2,  // the same for the online overlay
  kSearchBadToken = 3,    // a negative successor id
};

constexpr int64_t pack_bigram(int64_t t1, int64_t t2) { return (t1 << 32) | t2; }

struct RowTable {
  const int64_t* keys = nullptr;
  const int32_t* offsets = nullptr;  // [num_keys + 1]
  const int32_t* succ = nullptr;
  const float* vals = nullptr;
  int64_t num_keys = 0;
  int64_t num_entries = 0;

  // Entry range of a bigram's row ([0, 0) when absent); false when the offsets are invalid.
  bool find(int64_t key, int32_t* begin, int32_t* end) const {
    *begin = *end = 0;
    const int64_t* it = std::lower_bound(keys, keys + num_keys, key);
    if (it == keys + num_keys || *it != key) return true;
    const int64_t k = it - keys;
    *begin = offsets[k];
    *end = offsets[k + 1];
    return 0 <= *begin && *begin <= *end && *end <= num_entries;
  }
};

struct Successor {
  int32_t token;
  double value;
};

// SplitMix64: small, fast and simple to reproduce in Python.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    state += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

struct SearchParams {
  int iterations = 150;
  int max_len = 4;  // path length counting the root state
  int top_paths = 24;
  int max_nodes = 64;  // tree nodes including the root
  double c1 = 32.0;
  double c2 = 8.0;
  int64_t fallback_token = 100;
  uint64_t seed = 0;
};

struct MctsNode {
  int32_t token;
  int32_t prev_token;
  int32_t parent;
  int32_t first_child;  // children are contiguous: [first_child, first_child + num_children)
  int32_t num_children;
  int32_t depth;  // root 0
  int32_t visits;
  bool expanded;
  double value_sum;
  double prior;
};

// Reused buffers, so that a warm search allocates nothing.
struct SearchWorkspace {
  std::vector<MctsNode> nodes;
  std::vector<Successor> row;
  std::vector<int32_t> path;
  std::vector<int32_t> ranked;
  std::vector<int64_t> path_tokens;  // [top_paths, max_len] (-1 padded)
  std::vector<int32_t> path_lens;
};

// Successors of bigram (t1, t2) from the table and the overlay, sorted by value descending then
// token ascending, into `row`. Returns kSearchOk or the kind of bad input met.
inline SearchStatus gather_row(const RowTable& table, const RowTable& overlay, int64_t t1,
                               int64_t t2, std::vector<Successor>* row) {
  row->clear();
  const int64_t key = pack_bigram(t1, t2);
  int32_t begin = 0, end = 0;
  if (!table.find(key, &begin, &end)) return kSearchBadTable;
  for (int32_t e = begin; e < end; ++e) {
    if (table.succ[e] < 0) return kSearchBadToken;
    row->push_back({table.succ[e], static_cast<double>(table.vals[e])});
  }
  if (!overlay.find(key, &begin, &end)) return kSearchBadOverlay;
  const size_t stored = row->size();
  for (int32_t e = begin; e < end; ++e) {
    const int32_t tok = overlay.succ[e];
    if (tok < 0) return kSearchBadToken;
    const double value = static_cast<double>(overlay.vals[e]);
    size_t i = 0;
    while (i < stored && (*row)[i].token != tok) ++i;
    if (i < stored) {
      (*row)[i].value = value;
    } else {
      row->push_back({tok, value});
    }
  }
  // Insertion sort: rows are short and the stored part is already in order.
  for (size_t i = 1; i < row->size(); ++i) {
    const Successor s = (*row)[i];
    size_t j = i;
    while (j > 0 && ((*row)[j - 1].value < s.value ||
                     ((*row)[j - 1].value == s.value && (*row)[j - 1].token > s.token))) {
      (*row)[j] = (*row)[j - 1];
      --j;
    }
    (*row)[j] = s;
  }
  return kSearchOk;
}

// Merges ranked paths (tokens after the root, -1 padded to `width`) into a trie under the root:
// a path follows existing nodes while their tokens match and adds new nodes while fewer than
// max_nodes exist (then the rest of that path is dropped). Writes parents/tokens (topological;
// the rest padded with -1) and returns the node count.
inline int paths_to_tree(const int64_t* paths, const int32_t* lens, int num_paths, int width,
                         int64_t root_token, int max_nodes, int32_t* parents, int64_t* tokens) {
  int n = 1;
  parents[0] = -1;
  tokens[0] = root_token;
  for (int p = 0; p < num_paths; ++p) {
    int cur = 0;
    for (int s = 0; s < lens[p] && s < width; ++s) {
      const int64_t tok = paths[static_cast<int64_t>(p) * width + s];
      int child = -1;
      for (int i = cur + 1; i < n; ++i) {
        if (parents[i] == cur && tokens[i] == tok) {
          child = i;
          break;
        }
      }
      if (child < 0) {
        if (n >= max_nodes) break;
        child = n++;
        parents[child] = cur;
        tokens[child] = tok;
      }
      cur = child;
    }
  }
  for (int i = n; i < max_nodes; ++i) {
    parents[i] = -1;
    tokens[i] = -1;
  }
  return n;
}

namespace detail {

inline int select_child(const std::vector<MctsNode>& nodes, const MctsNode& parent, double c1,
                        double c2) {
  const double np = parent.visits;
  const double explore = (c1 + std::log((np + c2 + 1.0) / c2)) * std::sqrt(np);
  int best = parent.first_child;
  double best_score = -std::numeric_limits<double>::infinity();
  for (int c = parent.first_child; c < parent.first_child + parent.num_children; ++c) {
    const MctsNode& child = nodes[c];
    if (child.visits == 0) return c;  // unvisited scores +inf; the first one wins
    const double n = child.visits;
    const double score = child.value_sum / n + explore * child.prior / (1.0 + n);
    if (score > best_score) {
      best_score = score;
      best = c;
    }
  }
  return best;
}

}  // namespace detail

// The full search. context holds at least one token (its last is the root); parents/tokens have
// room for params.max_nodes entries. On success writes the tree and *num_nodes.
inline SearchStatus aded_search(const RowTable& table, const RowTable& overlay,
                                const int64_t* context, int64_t context_len,
                                const SearchParams& params, SearchWorkspace* ws,
                                int32_t* parents, int64_t* tokens, int32_t* num_nodes) {
  auto& nodes = ws->nodes;
  auto& row = ws->row;
  nodes.clear();
  const int64_t root_token = context[context_len - 1];
  const int max_depth = params.max_len - 1;
  int num_paths = 0;
  const int width = params.max_len;  // max_len - 1 search tokens + 1 greedy token
  ws->path_tokens.assign(static_cast<size_t>(std::max(params.top_paths, 1)) * width, -1);
  ws->path_lens.assign(std::max(params.top_paths, 1), 0);

  if (context_len >= 2 && max_depth >= 1) {
    nodes.push_back({static_cast<int32_t>(root_token), static_cast<int32_t>(context[context_len - 2]),
                     -1, -1, 0, 0, 0, false, 0.0, 0.0});
    SplitMix64 rng{params.seed};
    for (int it = 0; it < params.iterations; ++it) {
      auto& path = ws->path;
      path.assign(1, 0);
      int node = 0;
      while (nodes[node].num_children > 0) {
        node = detail::select_child(nodes, nodes[node], params.c1, params.c2);
        path.push_back(node);
      }
      if (!nodes[node].expanded && nodes[node].depth < max_depth) {
        nodes[node].expanded = true;
        const SearchStatus st =
            gather_row(table, overlay, nodes[node].prev_token, nodes[node].token, &row);
        if (st != kSearchOk) return st;
        if (!row.empty()) {
          const int32_t first = static_cast<int32_t>(nodes.size());
          const int32_t depth = nodes[node].depth + 1;
          const int32_t token = nodes[node].token;
          for (const Successor& s : row) {
            nodes.push_back({s.token, token, node, -1, 0, depth, 0, false, 0.0, s.value});
          }
          nodes[node].first_child = first;
          nodes[node].num_children = static_cast<int32_t>(row.size());
          node = static_cast<int>(nodes.size()) - 1;
          path.push_back(node);
        }
      }
      double reward = 1.0;
      int64_t prev = nodes[node].prev_token;
      int64_t cur = nodes[node].token;
      for (int d = nodes[node].depth; d < max_depth; ++d) {
        const SearchStatus st = gather_row(table, overlay, prev, cur, &row);
        if (st != kSearchOk) return st;
        if (row.empty()) break;
        double total = 0.0;
        for (const Successor& s : row) total += s.value;
        const double u = rng.uniform() * total;
        double cum = 0.0;
        size_t pick = row.size() - 1;
        for (size_t i = 0; i < row.size(); ++i) {
          cum += row[i].value;
          if (u < cum) {
            pick = i;
            break;
          }
        }
        reward += row[pick].value;
        prev = cur;
        cur = row[pick].token;
      }
      for (const int32_t p : path) {
        nodes[p].visits += 1;
        nodes[p].value_sum += reward;
      }
    }

    // Rank the non-root nodes by visits (ties: created first) and keep the top paths.
    auto& ranked = ws->ranked;
    ranked.clear();
    for (int32_t i = 1; i < static_cast<int32_t>(nodes.size()); ++i) ranked.push_back(i);
    num_paths = std::min<int>(params.top_paths, static_cast<int>(ranked.size()));
    std::partial_sort(ranked.begin(), ranked.begin() + num_paths, ranked.end(),
                      [&](int32_t a, int32_t b) {
                        return nodes[a].visits != nodes[b].visits
                                   ? nodes[a].visits > nodes[b].visits
                                   : a < b;
                      });
    for (int p = 0; p < num_paths; ++p) {
      const MctsNode& leaf = nodes[ranked[p]];
      int64_t* out = ws->path_tokens.data() + static_cast<int64_t>(p) * width;
      for (int n = ranked[p]; n > 0; n = nodes[n].parent) out[nodes[n].depth - 1] = nodes[n].token;
      int len = leaf.depth;
      const SearchStatus st = gather_row(table, overlay, leaf.prev_token, leaf.token, &row);
      if (st != kSearchOk) return st;
      if (!row.empty()) out[len++] = row[0].token;
      ws->path_lens[p] = len;
    }
  }
  if (num_paths == 0) {
    ws->path_tokens[0] = params.fallback_token;
    ws->path_lens[0] = 1;
    num_paths = 1;
  }
  *num_nodes = paths_to_tree(ws->path_tokens.data(), ws->path_lens.data(), num_paths, width,
                             root_token, params.max_nodes, parents, tokens);
  return kSearchOk;
}

}  // namespace adaeagle::aded
