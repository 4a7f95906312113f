// Every adaeagle op: its schema, its input checks, and its CPU / CUDA registrations.
//
// Ops write caller-provided outputs (marked Tensor(x!)) and return nothing, so the hot path
// allocates nothing and never syncs; adaeagle_ext/ops.py holds the allocating wrappers.
#include <torch/library.h>

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "cpu/build_tree.h"
#include "adaeagle/build_tree.h"
#include "cpu/aded_draft.h"

#include <string>

#ifdef ADAEAGLE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#define ADAEAGLE_CUDA_CHECK(expr)                                                 \
  do {                                                                            \
    const cudaError_t err_ = (expr);                                              \
    TORCH_CHECK(err_ == cudaSuccess, #expr, " failed: ", cudaGetErrorString(err_)); \
  } while (0)
#endif

namespace adaeagle {

TORCH_LIBRARY(adaeagle, m) {
  // Ancestor bit rows, depth, positions, first-child/next-sibling and root-to-leaf paths of a
  // ragged batch of parent arrays.
  m.def(
      "build_tree(Tensor parents, Tensor tree_indptr, Tensor prefix_lens, int max_depth, "
      "int max_leaves, Tensor(a!) mask_bits, Tensor(b!) depth, Tensor(c!) positions, "
      "Tensor(d!) first_child, Tensor(e!) next_sibling, Tensor(f!) leaf_paths, "
      "Tensor(g!) num_leaves) -> ()");

  // In place, all layers in one call: move each request's accepted rows (prefix + local id)
  // to consecutive slots after its prefix and write the new lengths.
  m.def(
      "kv_compact(Tensor(a!) kv_cache, Tensor accept_local, Tensor accept_len, "
      "Tensor prefix_lens, Tensor(b!) seq_lens) -> ()");

  // Greedy tree walk: accept the lowest-index child matching the target argmax; emit the
  // accepted path, the number of accepted drafts and the tokens (drafts + bonus).
  m.def(
      "verify_greedy(Tensor candidates, Tensor target_argmax, Tensor first_child, "
      "Tensor next_sibling, Tensor tree_indptr, Tensor(a!) accept_local, "
      "Tensor(b!) accept_len, Tensor(c!) out_tokens) -> ()");

  // Attention of tree tokens over their cached prefix and tree ancestors (mode 0 full,
  // 1 prefix-only, 2 tree-only), optional natural-log LSE.
  m.def(
      "tree_attention(Tensor q, Tensor kv_cache, int layer, Tensor prefix_lens, "
      "Tensor tree_indptr, Tensor mask_bits, float scale, int mode, Tensor(a!) out, "
      "Tensor(b!)? lse) -> ()");

  // Combine two partial attentions over disjoint keys by their LSE.
  m.def(
      "merge_attn_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b, "
      "Tensor(a!) out, Tensor(b!) lse) -> ()");

  // Lossless tree rejection sampling (mode 0 chain, 1 tree_recursive, 2 topk).
  m.def(
      "verify_sampling(Tensor candidates, Tensor target_probs, Tensor? draft_probs, "
      "Tensor first_child, Tensor next_sibling, Tensor tree_indptr, Tensor uniforms, int mode, "
      "Tensor(a!) accept_local, Tensor(b!) accept_len, Tensor(c!) out_tokens) -> ()");

  // Fused LDLP inference: draft length = clamp(round(mlp(features)), 0, k_max).
  m.def(
      "ldlp_mlp(Tensor emb, Tensor hidden, Tensor w_in, Tensor b_in, Tensor w_blocks, "
      "Tensor b_blocks, Tensor w_out, Tensor b_out, int k_max, float eps, "
      "Tensor(a!) lengths, Tensor(b!)? raw, Tensor(c!)? max_len) -> ()");

  // Small-M matmul on packed GGUF weights, batch-invariant, fp32 accumulation.
  m.def(
      "linear(Tensor x, Tensor weight, int ggml_type, Tensor? bias, Tensor(a!) out) -> ()");

  // ADED draft tree (CPU only): MCTS over a tri-gram table plus a per-generation overlay from the
  // last two context tokens; writes a padded parents/tokens tree and its node count.
  m.def(
      "aded_draft(Tensor table_keys, Tensor table_offsets, Tensor table_succ, "
      "Tensor table_vals, Tensor online_keys, Tensor online_offsets, Tensor online_succ, "
      "Tensor online_vals, Tensor context, int iterations, int max_len, int top_paths, "
      "int max_nodes, float c1, float c2, int fallback_token, int seed, Tensor(a!) parents, "
      "Tensor(b!) tokens, Tensor(c!) num_nodes) -> ()");

  // Merge ranked token paths into one draft tree under a root (shared prefixes once), at most
  // max_nodes nodes (CPU only).
  m.def(
      "aded_paths_to_tree(Tensor paths, Tensor path_lens, int root_token, int max_nodes, "
      "Tensor(a!) parents, Tensor(b!) tokens, Tensor(c!) num_nodes) -> ()");
}

// ---------------------------------------------------------------------------------------------
// build_tree

namespace {

void check_build_tree(const at::Tensor& parents, const at::Tensor& tree_indptr,
                      const at::Tensor& prefix_lens, int64_t max_depth, int64_t max_leaves,
                      const at::Tensor& mask_bits, const at::Tensor& depth,
                      const at::Tensor& positions, const at::Tensor& first_child,
                      const at::Tensor& next_sibling, const at::Tensor& leaf_paths,
                      const at::Tensor& num_leaves) {
  constexpr const char* op = "build_tree";
  const auto dev = parents.device();
  check_tensor(parents, op, "parents", at::kInt, 1, dev);
  check_tensor(tree_indptr, op, "tree_indptr", at::kInt, 1, dev);
  TORCH_CHECK(tree_indptr.numel() >= 1, op, ": tree_indptr must hold B+1 >= 1 entries");
  const int64_t batch = tree_indptr.numel() - 1;
  const int64_t n = parents.numel();
  check_tensor(prefix_lens, op, "prefix_lens", at::kInt, 1, dev);
  check_size(prefix_lens, op, "prefix_lens", 0, batch);
  TORCH_CHECK(max_depth >= 0 && max_depth < kMaxTreeNodes, op, ": max_depth must be in [0, ",
              kMaxTreeNodes, "), got ", max_depth);
  TORCH_CHECK(max_leaves >= 1 && max_leaves <= kMaxTreeNodes, op,
              ": max_leaves must be in [1, ", kMaxTreeNodes, "], got ", max_leaves);
  check_tensor(mask_bits, op, "mask_bits", at::kLong, 1, dev);
  check_size(mask_bits, op, "mask_bits", 0, n);
  check_tensor(depth, op, "depth", at::kInt, 1, dev);
  check_size(depth, op, "depth", 0, n);
  check_tensor(positions, op, "positions", at::kLong, 1, dev);
  check_size(positions, op, "positions", 0, n);
  check_tensor(first_child, op, "first_child", at::kInt, 1, dev);
  check_size(first_child, op, "first_child", 0, n);
  check_tensor(next_sibling, op, "next_sibling", at::kInt, 1, dev);
  check_size(next_sibling, op, "next_sibling", 0, n);
  check_tensor(leaf_paths, op, "leaf_paths", at::kInt, 3, dev);
  check_size(leaf_paths, op, "leaf_paths", 0, batch);
  check_size(leaf_paths, op, "leaf_paths", 1, max_leaves);
  check_size(leaf_paths, op, "leaf_paths", 2, max_depth + 1);
  check_tensor(num_leaves, op, "num_leaves", at::kInt, 1, dev);
  check_size(num_leaves, op, "num_leaves", 0, batch);
}

void build_tree_cpu(const at::Tensor& parents, const at::Tensor& tree_indptr,
                    const at::Tensor& prefix_lens, int64_t max_depth, int64_t max_leaves,
                    const at::Tensor& mask_bits, const at::Tensor& depth,
                    const at::Tensor& positions, const at::Tensor& first_child,
                    const at::Tensor& next_sibling, const at::Tensor& leaf_paths,
                    const at::Tensor& num_leaves) {
  check_build_tree(parents, tree_indptr, prefix_lens, max_depth, max_leaves, mask_bits, depth,
                   positions, first_child, next_sibling, leaf_paths, num_leaves);
  cpu::build_tree(parents.data_ptr<int32_t>(), tree_indptr.data_ptr<int32_t>(),
                  prefix_lens.data_ptr<int32_t>(), tree_indptr.numel() - 1, parents.numel(),
                  max_depth, max_leaves, mask_bits.data_ptr<int64_t>(),
                  depth.data_ptr<int32_t>(), positions.data_ptr<int64_t>(),
                  first_child.data_ptr<int32_t>(), next_sibling.data_ptr<int32_t>(),
                  leaf_paths.data_ptr<int32_t>(), num_leaves.data_ptr<int32_t>());
}

#ifdef ADAEAGLE_WITH_CUDA
void build_tree_cuda(const at::Tensor& parents, const at::Tensor& tree_indptr,
                     const at::Tensor& prefix_lens, int64_t max_depth, int64_t max_leaves,
                     const at::Tensor& mask_bits, const at::Tensor& depth,
                     const at::Tensor& positions, const at::Tensor& first_child,
                     const at::Tensor& next_sibling, const at::Tensor& leaf_paths,
                     const at::Tensor& num_leaves) {
  check_build_tree(parents, tree_indptr, prefix_lens, max_depth, max_leaves, mask_bits, depth,
                   positions, first_child, next_sibling, leaf_paths, num_leaves);
  const c10::cuda::CUDAGuard guard(parents.device());
  ADAEAGLE_CUDA_CHECK(launch_build_tree(
      parents.data_ptr<int32_t>(), tree_indptr.data_ptr<int32_t>(),
      prefix_lens.data_ptr<int32_t>(), static_cast<int>(tree_indptr.numel() - 1),
      static_cast<int>(max_depth), static_cast<int>(max_leaves), mask_bits.data_ptr<int64_t>(),
      depth.data_ptr<int32_t>(), positions.data_ptr<int64_t>(),
      first_child.data_ptr<int32_t>(), next_sibling.data_ptr<int32_t>(),
      leaf_paths.data_ptr<int32_t>(), num_leaves.data_ptr<int32_t>(),
      at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("build_tree", &build_tree_cpu); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("build_tree", &build_tree_cuda); }
#endif

// ---------------------------------------------------------------------------------------------
// kv_compact

// ---------------------------------------------------------------------------------------------
// verify_greedy

// ---------------------------------------------------------------------------------------------
// tree_attention and merge_attn_states

// ---------------------------------------------------------------------------------------------
// verify_sampling

// ---------------------------------------------------------------------------------------------
// ldlp_mlp

// ---------------------------------------------------------------------------------------------
// linear

// ---------------------------------------------------------------------------------------------
// aded_draft

namespace {

void check_rows(const at::Tensor& keys, const at::Tensor& offsets, const at::Tensor& succ,
                const at::Tensor& vals, const char* op, const char* prefix) {
  const std::string p(prefix);
  const auto dev = at::Device(at::kCPU);
  check_tensor(keys, op, (p + "_keys").c_str(), at::kLong, 1, dev);
  check_tensor(offsets, op, (p + "_offsets").c_str(), at::kInt, 1, dev);
  check_size(offsets, op, (p + "_offsets").c_str(), 0, keys.numel() + 1);
  check_tensor(succ, op, (p + "_succ").c_str(), at::kInt, 1, dev);
  check_tensor(vals, op, (p + "_vals").c_str(), at::kFloat, 1, dev);
  check_size(vals, op, (p + "_vals").c_str(), 0, succ.numel());
  const int32_t first = offsets.data_ptr<int32_t>()[0];
  const int32_t last = offsets.data_ptr<int32_t>()[keys.numel()];
  TORCH_CHECK(first == 0 && last == succ.numel(), op, ": ", p, "_offsets must run from 0 to ",
              succ.numel(), " (", p, "_succ entries), got ", first, " .. ", last);
}

void check_tree_outputs(const at::Tensor& parents, const at::Tensor& tokens,
                        const at::Tensor& num_nodes, int64_t max_nodes, const char* op) {
  const auto dev = at::Device(at::kCPU);
  TORCH_CHECK(max_nodes >= 2 && max_nodes <= kMaxTreeNodes, op, ": max_nodes must be in [2, ",
              kMaxTreeNodes, "], got ", max_nodes);
  check_tensor(parents, op, "parents", at::kInt, 1, dev);
  check_size(parents, op, "parents", 0, max_nodes);
  check_tensor(tokens, op, "tokens", at::kLong, 1, dev);
  check_size(tokens, op, "tokens", 0, max_nodes);
  check_tensor(num_nodes, op, "num_nodes", at::kInt, 1, dev);
  check_size(num_nodes, op, "num_nodes", 0, 1);
}

aded::RowTable row_table(const at::Tensor& keys, const at::Tensor& offsets,
                         const at::Tensor& succ, const at::Tensor& vals) {
  aded::RowTable t;
  t.keys = keys.data_ptr<int64_t>();
  t.offsets = offsets.data_ptr<int32_t>();
  t.succ = succ.data_ptr<int32_t>();
  t.vals = vals.data_ptr<float>();
  t.num_keys = keys.numel();
  t.num_entries = succ.numel();
  return t;
}

void aded_draft_cpu(const at::Tensor& table_keys, const at::Tensor& table_offsets,
                    const at::Tensor& table_succ, const at::Tensor& table_vals,
                    const at::Tensor& online_keys, const at::Tensor& online_offsets,
                    const at::Tensor& online_succ, const at::Tensor& online_vals,
                    const at::Tensor& context, int64_t iterations, int64_t max_len,
                    int64_t top_paths, int64_t max_nodes, double c1, double c2,
                    int64_t fallback_token, int64_t seed, const at::Tensor& parents,
                    const at::Tensor& tokens, const at::Tensor& num_nodes) {
  constexpr const char* op = "aded_draft";
  check_rows(table_keys, table_offsets, table_succ, table_vals, op, "table");
  check_rows(online_keys, online_offsets, online_succ, online_vals, op, "online");
  check_tensor(context, op, "context", at::kLong, 1, at::Device(at::kCPU));
  TORCH_CHECK(context.numel() >= 1, op, ": context must hold at least the root token");
  const int64_t* ctx = context.data_ptr<int64_t>();
  constexpr int64_t kMaxToken = int64_t{1} << 31;
  for (int64_t i = std::max<int64_t>(0, context.numel() - 2); i < context.numel(); ++i) {
    TORCH_CHECK(ctx[i] >= 0 && ctx[i] < kMaxToken, op, ": context[", i, "]=", ctx[i],
                " is not a token id in [0, 2^31)");
  }
  TORCH_CHECK(iterations >= 0 && iterations <= (1 << 20), op,
              ": iterations must be in [0, 2^20], got ", iterations);
  TORCH_CHECK(max_len >= 1 && max_len < kMaxTreeNodes, op, ": max_len must be in [1, ",
              kMaxTreeNodes, "), got ", max_len);
  TORCH_CHECK(top_paths >= 1 && top_paths <= 1024, op, ": top_paths must be in [1, 1024], got ",
              top_paths);
  TORCH_CHECK(c1 >= 0.0 && c2 > 0.0, op, ": need c1 >= 0 and c2 > 0, got c1=", c1, " c2=", c2);
  TORCH_CHECK(fallback_token >= 0 && fallback_token < kMaxToken, op, ": fallback_token=",
              fallback_token, " is not a token id in [0, 2^31)");
  check_tree_outputs(parents, tokens, num_nodes, max_nodes, op);
  aded::SearchParams params;
  params.iterations = static_cast<int>(iterations);
  params.max_len = static_cast<int>(max_len);
  params.top_paths = static_cast<int>(top_paths);
  params.max_nodes = static_cast<int>(max_nodes);
  params.c1 = c1;
  params.c2 = c2;
  params.fallback_token = fallback_token;
  params.seed = static_cast<uint64_t>(seed);
  cpu::aded_draft(row_table(table_keys, table_offsets, table_succ, table_vals),
                  row_table(online_keys, online_offsets, online_succ, online_vals), ctx,
                  context.numel(), params, parents.data_ptr<int32_t>(),
                  tokens.data_ptr<int64_t>(), num_nodes.data_ptr<int32_t>());
}

void aded_paths_to_tree_cpu(const at::Tensor& paths, const at::Tensor& path_lens,
                            int64_t root_token, int64_t max_nodes, const at::Tensor& parents,
                            const at::Tensor& tokens, const at::Tensor& num_nodes) {
  constexpr const char* op = "aded_paths_to_tree";
  const auto dev = at::Device(at::kCPU);
  check_tensor(paths, op, "paths", at::kLong, 2, dev);
  check_tensor(path_lens, op, "path_lens", at::kInt, 1, dev);
  check_size(path_lens, op, "path_lens", 0, paths.size(0));
  check_tree_outputs(parents, tokens, num_nodes, max_nodes, op);
  cpu::aded_paths_to_tree(paths.data_ptr<int64_t>(), path_lens.data_ptr<int32_t>(),
                          paths.size(0), paths.size(1), root_token, max_nodes,
                          parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(),
                          num_nodes.data_ptr<int32_t>());
}

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) {
  m.impl("aded_draft", &aded_draft_cpu);
  m.impl("aded_paths_to_tree", &aded_paths_to_tree_cpu);
}

}  // namespace adaeagle
