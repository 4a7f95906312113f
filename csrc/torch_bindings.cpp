// Every adaeagle op: its schema, its input checks, and its CPU / CUDA registrations.
//
// Ops write caller-provided outputs (marked Tensor(x!)) and return nothing, so the hot path
// allocates nothing and never syncs; adaeagle_ext/ops.py holds the allocating wrappers.
#include <torch/library.h>

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "cpu/build_tree.h"
#include "adaeagle/build_tree.h"
#include "cpu/ldlp_mlp.h"
#include "adaeagle/ldlp_mlp.h"

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

namespace {

LdlpDtype ldlp_dtype(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "ldlp_mlp: ", name,
              " must be float32 or bfloat16, got ", dtype);
  return dtype == at::kBFloat16 ? kLdlpBFloat16 : kLdlpFloat32;
}

// Checks every argument; returns {act dtype, weight dtype}.
std::pair<LdlpDtype, LdlpDtype> check_ldlp_mlp(
    const at::Tensor& emb, const at::Tensor& hidden, const at::Tensor& w_in,
    const at::Tensor& b_in, const at::Tensor& w_blocks, const at::Tensor& b_blocks,
    const at::Tensor& w_out, const at::Tensor& b_out, int64_t k_max, double eps,
    const at::Tensor& lengths, const std::optional<at::Tensor>& raw,
    const std::optional<at::Tensor>& max_len) {
  constexpr const char* op = "ldlp_mlp";
  const auto dev = emb.device();
  const LdlpDtype act = ldlp_dtype(emb, "emb");
  check_tensor(emb, op, "emb", emb.scalar_type(), 2, dev);
  const int64_t batch = emb.size(0);
  const int64_t hidden_size = emb.size(1);
  TORCH_CHECK(hidden_size >= 1, op, ": emb.size(1) (hidden size H) must be >= 1, got shape ",
              emb.sizes());
  check_tensor(hidden, op, "hidden (same dtype as emb)", emb.scalar_type(), 2, dev);
  check_size(hidden, op, "hidden", 0, batch);
  check_size(hidden, op, "hidden", 1, hidden_size);

  const LdlpDtype weight = ldlp_dtype(w_in, "w_in");
  const auto wt = w_in.scalar_type();
  check_tensor(w_in, op, "w_in", wt, 2, dev);
  const int64_t width = w_in.size(0);
  TORCH_CHECK(width >= 1 && width <= kLdlpMaxWidth, op, ": w_in.size(0) (width W) must be in [1, ",
              kLdlpMaxWidth, "], got shape ", w_in.sizes());
  check_size(w_in, op, "w_in", 1, 2 * hidden_size);
  check_tensor(b_in, op, "b_in (same dtype as w_in)", wt, 1, dev);
  check_size(b_in, op, "b_in", 0, width);
  check_tensor(w_blocks, op, "w_blocks (same dtype as w_in)", wt, 3, dev);
  check_size(w_blocks, op, "w_blocks", 0, kLdlpBlocks);
  check_size(w_blocks, op, "w_blocks", 1, width);
  check_size(w_blocks, op, "w_blocks", 2, width);
  check_tensor(b_blocks, op, "b_blocks (same dtype as w_in)", wt, 2, dev);
  check_size(b_blocks, op, "b_blocks", 0, kLdlpBlocks);
  check_size(b_blocks, op, "b_blocks", 1, width);
  check_tensor(w_out, op, "w_out (same dtype as w_in)", wt, 2, dev);
  check_size(w_out, op, "w_out", 0, 1);
  check_size(w_out, op, "w_out", 1, width);
  check_tensor(b_out, op, "b_out (same dtype as w_in)", wt, 1, dev);
  check_size(b_out, op, "b_out", 0, 1);

  TORCH_CHECK(k_max >= 0 && k_max <= INT32_MAX, op, ": k_max must be in [0, 2^31), got ", k_max);
  TORCH_CHECK(eps > 0.0 && static_cast<float>(eps) > 0.0f, op,
              ": eps must be > 0 (and representable as float32), got ", eps);

  check_tensor(lengths, op, "lengths", at::kInt, 1, dev);
  check_size(lengths, op, "lengths", 0, batch);
  if (raw.has_value()) {
    check_tensor(*raw, op, "raw", at::kFloat, 1, dev);
    check_size(*raw, op, "raw", 0, batch);
  }
  if (max_len.has_value()) {
    check_tensor(*max_len, op, "max_len", at::kInt, 1, dev);
    check_size(*max_len, op, "max_len", 0, 1);
  }
  return {act, weight};
}

void ldlp_mlp_cpu(const at::Tensor& emb, const at::Tensor& hidden, const at::Tensor& w_in,
                  const at::Tensor& b_in, const at::Tensor& w_blocks, const at::Tensor& b_blocks,
                  const at::Tensor& w_out, const at::Tensor& b_out, int64_t k_max, double eps,
                  const at::Tensor& lengths, const std::optional<at::Tensor>& raw,
                  const std::optional<at::Tensor>& max_len) {
  const auto [act, weight] = check_ldlp_mlp(emb, hidden, w_in, b_in, w_blocks, b_blocks, w_out,
                                            b_out, k_max, eps, lengths, raw, max_len);
  cpu::ldlp_mlp(emb.data_ptr(), hidden.data_ptr(), act, w_in.data_ptr(), b_in.data_ptr(),
                w_blocks.data_ptr(), b_blocks.data_ptr(), w_out.data_ptr(), b_out.data_ptr(),
                weight, emb.size(0), emb.size(1), w_in.size(0), static_cast<int32_t>(k_max),
                static_cast<float>(eps), lengths.data_ptr<int32_t>(),
                raw.has_value() ? raw->data_ptr<float>() : nullptr,
                max_len.has_value() ? max_len->data_ptr<int32_t>() : nullptr);
}

#ifdef ADAEAGLE_WITH_CUDA
void ldlp_mlp_cuda(const at::Tensor& emb, const at::Tensor& hidden, const at::Tensor& w_in,
                   const at::Tensor& b_in, const at::Tensor& w_blocks, const at::Tensor& b_blocks,
                   const at::Tensor& w_out, const at::Tensor& b_out, int64_t k_max, double eps,
                   const at::Tensor& lengths, const std::optional<at::Tensor>& raw,
                   const std::optional<at::Tensor>& max_len) {
  const auto [act, weight] = check_ldlp_mlp(emb, hidden, w_in, b_in, w_blocks, b_blocks, w_out,
                                            b_out, k_max, eps, lengths, raw, max_len);
  TORCH_CHECK(emb.size(0) <= INT32_MAX, "ldlp_mlp: batch too large for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(emb.device());
  ADAEAGLE_CUDA_CHECK(launch_ldlp_mlp(
      emb.data_ptr(), hidden.data_ptr(), act, w_in.data_ptr(), b_in.data_ptr(),
      w_blocks.data_ptr(), b_blocks.data_ptr(), w_out.data_ptr(), b_out.data_ptr(), weight,
      static_cast<int>(emb.size(0)), static_cast<int>(emb.size(1)),
      static_cast<int>(w_in.size(0)), static_cast<int32_t>(k_max), static_cast<float>(eps),
      lengths.data_ptr<int32_t>(), raw.has_value() ? raw->data_ptr<float>() : nullptr,
      max_len.has_value() ? max_len->data_ptr<int32_t>() : nullptr,
      at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("ldlp_mlp", &ldlp_mlp_cpu); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("ldlp_mlp", &ldlp_mlp_cuda); }
#endif


// ---------------------------------------------------------------------------------------------
// linear

}  // namespace adaeagle
