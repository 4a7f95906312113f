#include "cpu/verify_sampling.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>

#include "adaeagle/verify_sampling.h"

namespace adaeagle::cpu {
namespace {

// Block of the residual pass: computed into the output, then summed while it sits in L1.
constexpr int64_t kResidualBlock = 512;

// Sum of w[0, n) in double, with 8 independent accumulators so the loop vectorises.
double sum_double(const float* w, int64_t n) {
  double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(w[i + k]);
  }
  double total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) total += static_cast<double>(w[i]);
  return total;
}

// out = max(row * inv - q, 0) over the vocabulary; returns sum(out) in double.
double residual_pass(const float* row, float inv, const float* q, float* out, int64_t vocab) {
  double total = 0.0;
  for (int64_t begin = 0; begin < vocab; begin += kResidualBlock) {
    const int64_t len = std::min(kResidualBlock, vocab - begin);
    const float* r = row + begin;
    const float* qb = q + begin;
    float* o = out + begin;
    for (int64_t j = 0; j < len; ++j) o[j] = residual_prob(r[j], inv, qb[j]);
    total += sum_double(o, len);
  }
  return total;
}

// The weights of row[begin, begin + len) with the `excluded` token ids (topk's rejected
// siblings, at most 63 of them) counted as 0: the row itself, or a patched copy in tmp.
const float* chunk_weights(const float* row, int64_t begin, int64_t len, const int32_t* excluded,
                           int num_excluded, float* tmp) {
  bool copied = false;
  for (int k = 0; k < num_excluded; ++k) {
    const int64_t x = excluded[k];
    if (x < begin || x >= begin + len) continue;
    if (!copied) {
      std::memcpy(tmp, row + begin, static_cast<size_t>(len) * sizeof(float));
      copied = true;
    }
    tmp[x - begin] = 0.f;
  }
  return copied ? tmp : row + begin;
}

// Inverse-CDF sample over row[0, vocab) (excluded ids weigh 0) with u in [0, 1): the first
// index whose cumulative weight exceeds u * total. Returns -1 when the total weight is 0.
int64_t sample_index(const float* row, int64_t vocab, float u, const int32_t* excluded,
                     int num_excluded) {
  double chunk_sums[kMaxSampleChunks];
  float tmp[kSampleChunk];
  const int64_t num_chunks = (vocab + kSampleChunk - 1) / kSampleChunk;
  double total = 0.0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t begin = c * kSampleChunk;
    const int64_t len = std::min(kSampleChunk, vocab - begin);
    chunk_sums[c] = sum_double(chunk_weights(row, begin, len, excluded, num_excluded, tmp), len);
    total += chunk_sums[c];
  }
  if (!(total > 0.0)) return -1;
  const double t = sample_threshold(u, total);
  double prefix = 0.0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    if (prefix + chunk_sums[c] > t) {
      const int64_t begin = c * kSampleChunk;
      const int64_t len = std::min(kSampleChunk, vocab - begin);
      const float* w = chunk_weights(row, begin, len, excluded, num_excluded, tmp);
      const int64_t j = first_above(w, len, prefix, t);
      return begin + (j >= 0 ? j : last_positive(w, len));
    }
    prefix += chunk_sums[c];
  }
  // Unreachable: the loop's last prefix equals total > t.
  return -1;
}

enum FaultKind { kOk, kBadSize, kBadLink, kBadToken, kChainBranch, kNoMass };

struct Fault {
  FaultKind kind = kOk;
  int node = 0;
  int64_t value = 0;
};

struct Batch {
  const int64_t* candidates;
  const float* target_probs;
  const float* draft_probs;
  const int32_t* first_child;
  const int32_t* next_sibling;
  const int32_t* tree_indptr;
  const float* uniforms;
  int64_t num_nodes;
  int64_t vocab;
  int64_t width;
  int64_t mode;
  int32_t* accept_local;
  int32_t* accept_len;
  int64_t* out_tokens;
  float* scratch;
};

// A link from `from` (first child or next sibling) is -1 or a later node of the same tree.
bool valid_link(int32_t link, int from, int size) {
  return link == -1 || (link > from && link < size);
}

Fault verify_request(const Batch& a, int64_t b) {
  const int64_t start = a.tree_indptr[b];
  const int size = static_cast<int>(a.tree_indptr[b + 1] - start);
  const int64_t vocab = a.vocab;
  int32_t* path = a.accept_local + b * a.width;
  int64_t* tokens = a.out_tokens + b * a.width;
  std::fill(path, path + a.width, -1);
  std::fill(tokens, tokens + a.width, int64_t{-1});
  a.accept_len[b] = 0;
  if (size < 1 || size > kMaxTreeNodes) return {kBadSize, 0, size};
  const int64_t* cand = a.candidates + start;
  const int32_t* first_child = a.first_child + start;
  const int32_t* next_sibling = a.next_sibling + start;
  if (a.mode == kVerifyChain) {
    for (int i = 0; i < size; ++i) {
      if (next_sibling[i] != -1) return {kChainBranch, i, next_sibling[i]};
    }
  }
  float* buffers[2] = {a.scratch + b * 2 * vocab, a.scratch + (b * 2 + 1) * vocab};

  int node = 0;
  int accepted_drafts = 0;
  path[0] = 0;
  const float* row = nullptr;  // current target distribution p = row * inv
  float inv = 1.f;
  int32_t removed[kMaxTreeNodes];  // topk: tokens of rejected siblings
  int num_removed = 0;
  while (true) {
    row = a.target_probs + (start + node) * vocab;
    inv = 1.f;
    num_removed = 0;
    if (accepted_drafts == a.width - 1) break;
    int child = first_child[node];
    if (!valid_link(child, node, size)) return {kBadLink, node, child};
    int accepted = -1;
    int free_buffer = 0;
    double mass = 0.0;  // topk: target mass not yet removed
    bool have_mass = false;
    while (child != -1) {
      const int64_t x = cand[child];
      if (x < 0 || x >= vocab) return {kBadToken, child, x};
      const float u = a.uniforms[start + child];
      if (a.mode == kVerifyTopk) {
        if (!have_mass) {
          mass = sum_double(row, vocab);
          have_mass = true;
        }
        // A token already rejected among the earlier siblings is skipped.
        const int32_t* removed_end = removed + num_removed;
        if (std::find(static_cast<const int32_t*>(removed), removed_end, x) == removed_end) {
          const float px = row[x];
          if (accept_by_mass(u, px, mass)) {
            accepted = child;
            break;
          }
          removed[num_removed++] = static_cast<int32_t>(x);
          mass -= static_cast<double>(px);
        }
      } else {
        const float* q = a.draft_probs + (start + child) * vocab;
        if (accept_by_ratio(u, mul_rn(row[x], inv), q[x])) {
          accepted = child;
          break;
        }
        float* out = buffers[free_buffer];
        const double s = residual_pass(row, inv, q, out, vocab);
        // A residual without mass (only through round-off) keeps p itself.
        if (s > 0.0) {
          row = out;
          inv = inverse_mass(s);
          free_buffer ^= 1;
        }
      }
      const int32_t next = next_sibling[child];
      if (!valid_link(next, child, size)) return {kBadLink, child, next};
      child = next;
    }
    if (accepted < 0) break;
    tokens[accepted_drafts] = cand[accepted];
    ++accepted_drafts;
    path[accepted_drafts] = accepted;
    node = accepted;
  }

  const float u = a.uniforms[a.num_nodes + b];
  int64_t token = sample_index(row, vocab, u, removed, num_removed);
  // topk with every token of positive mass removed (only through round-off): sample p itself.
  if (token < 0 && num_removed > 0) token = sample_index(row, vocab, u, nullptr, 0);
  if (token < 0) return {kNoMass, node, 0};
  tokens[accepted_drafts] = token;
  a.accept_len[b] = accepted_drafts;
  return {};
}

std::string describe(const Fault& fault, int64_t request, int64_t vocab) {
  const std::string where = "verify_sampling: request " + std::to_string(request) + ": ";
  const std::string node = "node " + std::to_string(fault.node);
  switch (fault.kind) {
    case kBadSize:
      return where + "tree has " + std::to_string(fault.value) + " nodes, expected 1 to " +
             std::to_string(kMaxTreeNodes) + " (tree_indptr)";
    case kBadLink:
      return where + node + " links to " + std::to_string(fault.value) +
             " (first_child/next_sibling), expected -1 or a later node of the same tree";
    case kBadToken:
      return where + "candidates of " + node + " is " + std::to_string(fault.value) +
             ", outside the vocabulary [0, " + std::to_string(vocab) + ")";
    case kChainBranch:
      return where + node + " has a next sibling " + std::to_string(fault.value) +
             ", but mode 0 (chain) allows at most one child per node";
    case kNoMass:
      return where + "the distribution to sample at " + node +
             " has no positive mass (target_probs row of zeros?)";
    default:
      return where + "invalid input";
  }
}

}  // namespace

void verify_sampling(const int64_t* candidates, const float* target_probs,
                     const float* draft_probs, const int32_t* first_child,
                     const int32_t* next_sibling, const int32_t* tree_indptr,
                     const float* uniforms, int64_t batch, int64_t num_nodes, int64_t vocab,
                     int64_t width, int64_t mode, int32_t* accept_local, int32_t* accept_len,
                     int64_t* out_tokens, float* scratch) {
  TORCH_CHECK(tree_indptr[0] == 0, "verify_sampling: tree_indptr[0] must be 0, got ",
              tree_indptr[0]);
  TORCH_CHECK(tree_indptr[batch] == num_nodes, "verify_sampling: tree_indptr[-1] must equal ",
              "candidates.numel()=", num_nodes, ", got ", tree_indptr[batch]);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(tree_indptr[b + 1] >= tree_indptr[b], "verify_sampling: tree_indptr must be ",
                "non-decreasing, got tree_indptr[", b + 1, "]=", tree_indptr[b + 1], " < ",
                tree_indptr[b]);
  }
  const Batch args{candidates, target_probs, draft_probs, first_child,  next_sibling,
                   tree_indptr, uniforms,    num_nodes,   vocab,        width,
                   mode,        accept_local, accept_len, out_tokens,   scratch};
  // The first faulty request (lowest index) is re-run alone to describe its fault, so the hot
  // path keeps no per-request fault records.
  std::atomic<int64_t> first_fault{batch};
  // A request costs O(vocab) per rejection: small grains keep every core busy at small B.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(vocab, 1));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (verify_request(args, b).kind == kOk) continue;
      int64_t seen = first_fault.load();
      while (b < seen && !first_fault.compare_exchange_weak(seen, b)) {
      }
    }
  });
  const int64_t bad = first_fault.load();
  if (bad < batch) TORCH_CHECK(false, describe(verify_request(args, bad), bad, vocab));
}

}  // namespace adaeagle::cpu
