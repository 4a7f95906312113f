// Every adaeagle op: its schema, its input checks, and its CPU / CUDA registrations.
//
// Ops write caller-provided outputs (marked Tensor(x!)) and return nothing, so the hot path
// allocates nothing and never syncs; adaeagle_ext/ops.py holds the allocating wrappers.
#include <torch/library.h>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>

#include <cmath>
#include <string>

#include "adaeagle/build_tree.h"
#include "adaeagle/gguf_blocks.h"
#include "adaeagle/kv_compact.h"
#include "adaeagle/ldlp_mlp.h"
#include "adaeagle/rms_norm.h"
#include "adaeagle/rope_store_kv.h"
#include "adaeagle/tree_attention.h"
#include "adaeagle/verify_greedy.h"
#include "adaeagle/verify_sampling.h"
#include "checks.h"
#include "cpu/aded_draft.h"
#include "cpu/build_tree.h"
#include "cpu/kv_compact.h"
#include "cpu/ldlp_mlp.h"
#include "cpu/linear.h"
#include "cpu/rms_norm.h"
#include "cpu/rope_store_kv.h"
#include "cpu/tree_attention.h"
#include "cpu/verify_greedy.h"
#include "cpu/verify_sampling.h"

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

  // Attention of tree tokens over their cached prefix and tree ancestors (attn_mode 0 full,
  // 1 prefix-only, 2 tree-only), optional natural-log LSE. (An argument named `mode` would
  // collide with torch's dispatch-mode helpers under opcheck / torch.compile.)
  m.def(
      "tree_attention(Tensor q, Tensor kv_cache, int layer, Tensor prefix_lens, "
      "Tensor tree_indptr, Tensor mask_bits, float scale, int attn_mode, Tensor(a!) out, "
      "Tensor(b!)? lse) -> ()");

  // Combine two partial attentions over disjoint keys by their LSE.
  m.def(
      "merge_attn_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b, "
      "Tensor(a!) out, Tensor(b!) lse) -> ()");

  // Lossless tree rejection sampling (mode 0 chain, 1 tree_recursive, 2 topk); scratch holds
  // two residual rows of V floats per request.
  m.def(
      "verify_sampling(Tensor candidates, Tensor target_probs, Tensor? draft_probs, "
      "Tensor first_child, Tensor next_sibling, Tensor tree_indptr, Tensor uniforms, "
      "int verify_mode, Tensor(a!) accept_local, Tensor(b!) accept_len, "
      "Tensor(c!) out_tokens, Tensor(d!) scratch) -> ()");

  // Fused LDLP inference: draft length = clamp(round(mlp(features)), 0, k_max).
  m.def(
      "ldlp_mlp(Tensor emb, Tensor hidden, Tensor w_in, Tensor b_in, Tensor w_blocks, "
      "Tensor b_blocks, Tensor w_out, Tensor b_out, int k_max, float eps, "
      "Tensor(a!) lengths, Tensor(b!)? raw, Tensor(c!)? max_len) -> ()");

  // Small-M matmul on packed GGUF weights, batch-invariant, fp32 accumulation; act_quant=8
  // quantises each row of x to 8 bits per 32-block for integer dot products (CPU, Q types).
  m.def(
      "linear(Tensor x, Tensor weight, int ggml_type, Tensor? bias, Tensor(a!) out, "
      "int act_quant=0) -> ()");

  // RMSNorm of each row, batch-invariant: out = weight * round(x * rsqrt(mean(x^2) + eps)).
  // out may be x itself.
  m.def("rms_norm(Tensor x, Tensor weight, float eps, Tensor(a!) out) -> ()");

  // RoPE of q and k (each product rounded to the dtype, as PyTorch's separate ops) and the
  // cache write: q_out gets the roped queries, kv_cache[layer, 0 / 1, req[i], rows[i]] token i's
  // roped keys / its values.
  m.def(
      "rope_store_kv(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) kv_cache, int layer, "
      "Tensor req, Tensor rows, int num_heads, int num_kv_heads, Tensor(b!) q_out) -> ()");

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

namespace {

// The cache may be a strided view (e.g. a slice of a larger buffer) as long as each row, the
// [Hkv, D] block of one (layer, k/v, request, position), is contiguous.
void check_kv_compact(const at::Tensor& kv_cache, const at::Tensor& accept_local,
                      const at::Tensor& accept_len, const at::Tensor& prefix_lens,
                      const at::Tensor& seq_lens) {
  constexpr const char* op = "kv_compact";
  const auto dev = kv_cache.device();
  check_float_dtype(kv_cache, op, "kv_cache");
  TORCH_CHECK(kv_cache.dim() == 6, op, ": kv_cache must have 6 dimensions ",
              "[L, 2, B, S_max, Hkv, D], got shape ", kv_cache.sizes());
  check_size(kv_cache, op, "kv_cache", 1, 2);
  TORCH_CHECK(kv_cache.size(0) >= 1, op, ": kv_cache must have at least one layer, got shape ",
              kv_cache.sizes());
  TORCH_CHECK(kv_cache.stride(5) == 1 && (kv_cache.size(4) == 1 ||
                                          kv_cache.stride(4) == kv_cache.size(5)),
              op, ": kv_cache rows [Hkv, D] must be contiguous (strides (D, 1)), got strides ",
              kv_cache.strides());
  TORCH_CHECK(at::has_internal_overlap(kv_cache) != at::MemOverlap::Yes, op,
              ": kv_cache must not have overlapping memory (e.g. from expand)");
  const int64_t batch = kv_cache.size(2);
  check_tensor(accept_local, op, "accept_local", at::kInt, 2, dev);
  check_size(accept_local, op, "accept_local", 0, batch);
  TORCH_CHECK(accept_local.size(1) >= 1 && accept_local.size(1) <= kMaxTreeNodes, op,
              ": accept_local.size(1) (max_depth + 1) must be in [1, ", kMaxTreeNodes,
              "], got shape ", accept_local.sizes());
  check_tensor(accept_len, op, "accept_len", at::kInt, 1, dev);
  check_size(accept_len, op, "accept_len", 0, batch);
  check_tensor(prefix_lens, op, "prefix_lens", at::kInt, 1, dev);
  check_size(prefix_lens, op, "prefix_lens", 0, batch);
  check_tensor(seq_lens, op, "seq_lens", at::kInt, 1, dev);
  check_size(seq_lens, op, "seq_lens", 0, batch);
  for (const auto* input : {&accept_local, &accept_len, &prefix_lens}) {
    const auto overlap = at::get_overlap_status(seq_lens, *input);
    TORCH_CHECK(overlap != at::MemOverlapStatus::Full &&
                    overlap != at::MemOverlapStatus::Partial,
                op, ": seq_lens must not share memory with accept_local, accept_len or ",
                "prefix_lens");
  }
}

struct KvLayout {
  int64_t stride_layer, stride_kv, stride_batch, stride_seq, row_bytes;
};

KvLayout kv_layout(const at::Tensor& kv_cache) {
  const int64_t elem = static_cast<int64_t>(kv_cache.element_size());
  return {kv_cache.stride(0) * elem, kv_cache.stride(1) * elem, kv_cache.stride(2) * elem,
          kv_cache.stride(3) * elem, kv_cache.size(4) * kv_cache.size(5) * elem};
}

void kv_compact_cpu(const at::Tensor& kv_cache, const at::Tensor& accept_local,
                    const at::Tensor& accept_len, const at::Tensor& prefix_lens,
                    const at::Tensor& seq_lens) {
  check_kv_compact(kv_cache, accept_local, accept_len, prefix_lens, seq_lens);
  const KvLayout layout = kv_layout(kv_cache);
  cpu::kv_compact(kv_cache.data_ptr(), kv_cache.size(0), kv_cache.size(2), kv_cache.size(3),
                  layout.stride_layer, layout.stride_kv, layout.stride_batch, layout.stride_seq,
                  layout.row_bytes, accept_local.data_ptr<int32_t>(), accept_local.size(1),
                  accept_len.data_ptr<int32_t>(), prefix_lens.data_ptr<int32_t>(),
                  seq_lens.data_ptr<int32_t>());
}

#ifdef ADAEAGLE_WITH_CUDA
void kv_compact_cuda(const at::Tensor& kv_cache, const at::Tensor& accept_local,
                     const at::Tensor& accept_len, const at::Tensor& prefix_lens,
                     const at::Tensor& seq_lens) {
  check_kv_compact(kv_cache, accept_local, accept_len, prefix_lens, seq_lens);
  TORCH_CHECK(kv_cache.size(0) * 2 <= 65535, "kv_compact: kv_cache has too many layers for ",
              "one launch, got shape ", kv_cache.sizes());
  const c10::cuda::CUDAGuard guard(kv_cache.device());
  const KvLayout layout = kv_layout(kv_cache);
  ADAEAGLE_CUDA_CHECK(launch_kv_compact(
      kv_cache.data_ptr(), kv_cache.size(0), kv_cache.size(2), kv_cache.size(3),
      layout.stride_layer, layout.stride_kv, layout.stride_batch, layout.stride_seq,
      layout.row_bytes, accept_local.data_ptr<int32_t>(),
      static_cast<int>(accept_local.size(1)), accept_len.data_ptr<int32_t>(),
      prefix_lens.data_ptr<int32_t>(), seq_lens.data_ptr<int32_t>(),
      at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("kv_compact", &kv_compact_cpu); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("kv_compact", &kv_compact_cuda); }
#endif

// ---------------------------------------------------------------------------------------------
// verify_greedy

namespace {

void check_verify_greedy(const at::Tensor& candidates, const at::Tensor& target_argmax,
                         const at::Tensor& first_child, const at::Tensor& next_sibling,
                         const at::Tensor& tree_indptr, const at::Tensor& accept_local,
                         const at::Tensor& accept_len, const at::Tensor& out_tokens) {
  constexpr const char* op = "verify_greedy";
  const auto dev = candidates.device();
  check_tensor(candidates, op, "candidates", at::kLong, 1, dev);
  const int64_t n = candidates.numel();
  check_tensor(target_argmax, op, "target_argmax", at::kLong, 1, dev);
  check_size(target_argmax, op, "target_argmax", 0, n);
  check_tensor(first_child, op, "first_child", at::kInt, 1, dev);
  check_size(first_child, op, "first_child", 0, n);
  check_tensor(next_sibling, op, "next_sibling", at::kInt, 1, dev);
  check_size(next_sibling, op, "next_sibling", 0, n);
  check_tensor(tree_indptr, op, "tree_indptr", at::kInt, 1, dev);
  TORCH_CHECK(tree_indptr.numel() >= 1, op, ": tree_indptr must hold B+1 >= 1 entries");
  const int64_t batch = tree_indptr.numel() - 1;
  check_tensor(accept_local, op, "accept_local", at::kInt, 2, dev);
  check_size(accept_local, op, "accept_local", 0, batch);
  const int64_t width = accept_local.size(1);
  TORCH_CHECK(width >= 1 && width <= kMaxTreeNodes, op,
              ": accept_local.size(1) (max_depth + 1) must be in [1, ", kMaxTreeNodes,
              "], got shape ", accept_local.sizes());
  check_tensor(accept_len, op, "accept_len", at::kInt, 1, dev);
  check_size(accept_len, op, "accept_len", 0, batch);
  check_tensor(out_tokens, op, "out_tokens", at::kLong, 2, dev);
  check_size(out_tokens, op, "out_tokens", 0, batch);
  check_size(out_tokens, op, "out_tokens", 1, width);
}

void verify_greedy_cpu(const at::Tensor& candidates, const at::Tensor& target_argmax,
                       const at::Tensor& first_child, const at::Tensor& next_sibling,
                       const at::Tensor& tree_indptr, const at::Tensor& accept_local,
                       const at::Tensor& accept_len, const at::Tensor& out_tokens) {
  check_verify_greedy(candidates, target_argmax, first_child, next_sibling, tree_indptr,
                      accept_local, accept_len, out_tokens);
  cpu::verify_greedy(candidates.data_ptr<int64_t>(), target_argmax.data_ptr<int64_t>(),
                     first_child.data_ptr<int32_t>(), next_sibling.data_ptr<int32_t>(),
                     tree_indptr.data_ptr<int32_t>(), tree_indptr.numel() - 1,
                     candidates.numel(), accept_local.size(1), accept_local.data_ptr<int32_t>(),
                     accept_len.data_ptr<int32_t>(), out_tokens.data_ptr<int64_t>());
}

#ifdef ADAEAGLE_WITH_CUDA
void verify_greedy_cuda(const at::Tensor& candidates, const at::Tensor& target_argmax,
                        const at::Tensor& first_child, const at::Tensor& next_sibling,
                        const at::Tensor& tree_indptr, const at::Tensor& accept_local,
                        const at::Tensor& accept_len, const at::Tensor& out_tokens) {
  check_verify_greedy(candidates, target_argmax, first_child, next_sibling, tree_indptr,
                      accept_local, accept_len, out_tokens);
  const c10::cuda::CUDAGuard guard(candidates.device());
  ADAEAGLE_CUDA_CHECK(launch_verify_greedy(
      candidates.data_ptr<int64_t>(), target_argmax.data_ptr<int64_t>(),
      first_child.data_ptr<int32_t>(), next_sibling.data_ptr<int32_t>(),
      tree_indptr.data_ptr<int32_t>(), static_cast<int>(tree_indptr.numel() - 1),
      candidates.numel(), static_cast<int>(accept_local.size(1)),
      accept_local.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(),
      out_tokens.data_ptr<int64_t>(), at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("verify_greedy", &verify_greedy_cpu); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("verify_greedy", &verify_greedy_cuda); }
#endif

// ---------------------------------------------------------------------------------------------
// tree_attention and merge_attn_states

namespace {

AttnDtype attn_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kAttnF32;
    case at::kBFloat16: return kAttnBF16;
    default: return kAttnF16;
  }
}

cpu::TreeAttentionShape check_tree_attention(const at::Tensor& q, const at::Tensor& kv_cache,
                                             int64_t layer, const at::Tensor& prefix_lens,
                                             const at::Tensor& tree_indptr,
                                             const at::Tensor& mask_bits, int64_t mode,
                                             const at::Tensor& out,
                                             const std::optional<at::Tensor>& lse) {
  constexpr const char* op = "tree_attention";
  const auto dev = q.device();
  check_float_dtype(q, op, "q");
  check_tensor(q, op, "q", q.scalar_type(), 3, dev);
  TORCH_CHECK(kv_cache.scalar_type() == q.scalar_type(), op, ": kv_cache dtype ",
              kv_cache.scalar_type(), " must match q dtype ", q.scalar_type());
  check_tensor(kv_cache, op, "kv_cache", q.scalar_type(), 6, dev);
  TORCH_CHECK(kv_cache.size(1) == 2, op, ": kv_cache must be [L, 2, B, S_max, Hkv, D], got ",
              "shape ", kv_cache.sizes());
  const int64_t n = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t hkv = kv_cache.size(4);
  TORCH_CHECK(dim == 64 || dim == 128, op, ": head dim must be 64 or 128, got q shape ",
              q.sizes());
  check_size(kv_cache, op, "kv_cache", 5, dim);
  TORCH_CHECK(hkv > 0 && heads % hkv == 0, op, ": q heads H=", heads,
              " must be a multiple of the kv_cache heads Hkv=", hkv);
  TORCH_CHECK(layer >= 0 && layer < kv_cache.size(0), op, ": layer must be in [0, ",
              kv_cache.size(0), "), got ", layer);
  check_tensor(tree_indptr, op, "tree_indptr", at::kInt, 1, dev);
  TORCH_CHECK(tree_indptr.numel() >= 1, op, ": tree_indptr must hold B+1 >= 1 entries");
  const int64_t batch = tree_indptr.numel() - 1;
  TORCH_CHECK(batch <= kv_cache.size(2), op, ": ", batch, " requests but kv_cache holds ",
              kv_cache.size(2), " (dim 2)");
  check_tensor(prefix_lens, op, "prefix_lens", at::kInt, 1, dev);
  check_size(prefix_lens, op, "prefix_lens", 0, batch);
  check_tensor(mask_bits, op, "mask_bits", at::kLong, 1, dev);
  check_size(mask_bits, op, "mask_bits", 0, n);
  TORCH_CHECK(mode == kAttnFull || mode == kAttnPrefixOnly || mode == kAttnTreeOnly, op,
              ": mode must be 0 (full), 1 (prefix-only) or 2 (tree-only), got ", mode);
  check_tensor(out, op, "out", q.scalar_type(), 3, dev);
  TORCH_CHECK(out.sizes() == q.sizes(), op, ": out must have q's shape ", q.sizes(), ", got ",
              out.sizes());
  if (lse.has_value()) {
    check_tensor(*lse, op, "lse", at::kFloat, 2, dev);
    check_size(*lse, op, "lse", 0, n);
    check_size(*lse, op, "lse", 1, heads);
  }
  return {n, heads, dim, kv_cache.size(0), kv_cache.size(2), kv_cache.size(3), hkv, batch};
}

void check_merge_attn_states(const at::Tensor& out_a, const at::Tensor& lse_a,
                             const at::Tensor& out_b, const at::Tensor& lse_b,
                             const at::Tensor& out, const at::Tensor& lse) {
  constexpr const char* op = "merge_attn_states";
  const auto dev = out_a.device();
  check_float_dtype(out_a, op, "out_a");
  check_tensor(out_a, op, "out_a", out_a.scalar_type(), 3, dev);
  check_tensor(out_b, op, "out_b", out_a.scalar_type(), 3, dev);
  check_tensor(out, op, "out", out_a.scalar_type(), 3, dev);
  TORCH_CHECK(out_b.sizes() == out_a.sizes() && out.sizes() == out_a.sizes(), op,
              ": out_a, out_b and out must have one shape [N, H, D], got ", out_a.sizes(), ", ",
              out_b.sizes(), " and ", out.sizes());
  for (const auto& [t, name] : {std::pair{&lse_a, "lse_a"}, {&lse_b, "lse_b"}, {&lse, "lse"}}) {
    check_tensor(*t, op, name, at::kFloat, 2, dev);
    check_size(*t, op, name, 0, out_a.size(0));
    check_size(*t, op, name, 1, out_a.size(1));
  }
}

void tree_attention_cpu(const at::Tensor& q, const at::Tensor& kv_cache, int64_t layer,
                        const at::Tensor& prefix_lens, const at::Tensor& tree_indptr,
                        const at::Tensor& mask_bits, double scale, int64_t mode,
                        const at::Tensor& out, const std::optional<at::Tensor>& lse) {
  const auto shape = check_tree_attention(q, kv_cache, layer, prefix_lens, tree_indptr,
                                          mask_bits, mode, out, lse);
  cpu::tree_attention(q.data_ptr(), kv_cache.data_ptr(), attn_dtype(q), shape, layer,
                      prefix_lens.data_ptr<int32_t>(), tree_indptr.data_ptr<int32_t>(),
                      mask_bits.data_ptr<int64_t>(), static_cast<float>(scale),
                      static_cast<int>(mode), out.data_ptr(),
                      lse.has_value() ? lse->data_ptr<float>() : nullptr);
}

void merge_attn_states_cpu(const at::Tensor& out_a, const at::Tensor& lse_a,
                           const at::Tensor& out_b, const at::Tensor& lse_b,
                           const at::Tensor& out, const at::Tensor& lse) {
  check_merge_attn_states(out_a, lse_a, out_b, lse_b, out, lse);
  cpu::merge_attn_states(out_a.data_ptr(), lse_a.data_ptr<float>(), out_b.data_ptr(),
                         lse_b.data_ptr<float>(), attn_dtype(out_a),
                         out_a.size(0) * out_a.size(1), out_a.size(2), out.data_ptr(),
                         lse.data_ptr<float>());
}

#ifdef ADAEAGLE_WITH_CUDA
void tree_attention_cuda(const at::Tensor& q, const at::Tensor& kv_cache, int64_t layer,
                         const at::Tensor& prefix_lens, const at::Tensor& tree_indptr,
                         const at::Tensor& mask_bits, double scale, int64_t mode,
                         const at::Tensor& out, const std::optional<at::Tensor>& lse) {
  const auto shape = check_tree_attention(q, kv_cache, layer, prefix_lens, tree_indptr,
                                          mask_bits, mode, out, lse);
  if (shape.batch == 0 || shape.num_nodes == 0) return;
  const c10::cuda::CUDAGuard guard(q.device());
  ADAEAGLE_CUDA_CHECK(launch_tree_attention(
      q.data_ptr(), kv_cache.data_ptr(), attn_dtype(q), layer, shape.cache_batch, shape.s_max,
      static_cast<int>(shape.hkv), static_cast<int>(shape.heads), static_cast<int>(shape.dim),
      prefix_lens.data_ptr<int32_t>(), tree_indptr.data_ptr<int32_t>(),
      mask_bits.data_ptr<int64_t>(), static_cast<int>(shape.batch), static_cast<float>(scale),
      static_cast<int>(mode), out.data_ptr(), lse.has_value() ? lse->data_ptr<float>() : nullptr,
      at::cuda::getCurrentCUDAStream()));
}

void merge_attn_states_cuda(const at::Tensor& out_a, const at::Tensor& lse_a,
                            const at::Tensor& out_b, const at::Tensor& lse_b,
                            const at::Tensor& out, const at::Tensor& lse) {
  check_merge_attn_states(out_a, lse_a, out_b, lse_b, out, lse);
  if (out_a.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out_a.device());
  ADAEAGLE_CUDA_CHECK(launch_merge_attn_states(
      out_a.data_ptr(), lse_a.data_ptr<float>(), out_b.data_ptr(), lse_b.data_ptr<float>(),
      attn_dtype(out_a), out_a.size(0), static_cast<int>(out_a.size(1)),
      static_cast<int>(out_a.size(2)), out.data_ptr(), lse.data_ptr<float>(),
      at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) {
  m.impl("tree_attention", &tree_attention_cpu);
  m.impl("merge_attn_states", &merge_attn_states_cpu);
}
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) {
  m.impl("tree_attention", &tree_attention_cuda);
  m.impl("merge_attn_states", &merge_attn_states_cuda);
}
#endif

// ---------------------------------------------------------------------------------------------
// verify_sampling

namespace {

void check_verify_sampling(const at::Tensor& candidates, const at::Tensor& target_probs,
                           const std::optional<at::Tensor>& draft_probs,
                           const at::Tensor& first_child, const at::Tensor& next_sibling,
                           const at::Tensor& tree_indptr, const at::Tensor& uniforms,
                           int64_t mode, const at::Tensor& accept_local,
                           const at::Tensor& accept_len, const at::Tensor& out_tokens,
                           const at::Tensor& scratch) {
  constexpr const char* op = "verify_sampling";
  const auto dev = candidates.device();
  check_tensor(candidates, op, "candidates", at::kLong, 1, dev);
  const int64_t n = candidates.numel();
  check_tensor(target_probs, op, "target_probs", at::kFloat, 2, dev);
  check_size(target_probs, op, "target_probs", 0, n);
  const int64_t vocab = target_probs.size(1);
  TORCH_CHECK(vocab >= 1 && vocab <= kMaxVocab, op, ": the vocabulary (target_probs.size(1)) ",
              "must be in [1, ", kMaxVocab, "], got ", vocab);
  TORCH_CHECK(mode == kVerifyChain || mode == kVerifyTreeRecursive || mode == kVerifyTopk, op,
              ": mode must be 0 (chain), 1 (tree_recursive) or 2 (topk), got ", mode);
  if (mode == kVerifyTopk) {
    TORCH_CHECK(!draft_probs.has_value(), op, ": draft_probs must be None in mode 2 (topk), ",
                "whose proposals are deterministic");
  } else {
    TORCH_CHECK(draft_probs.has_value(), op, ": draft_probs is required in mode ", mode,
                mode == kVerifyChain ? " (chain)" : " (tree_recursive)");
    check_tensor(*draft_probs, op, "draft_probs", at::kFloat, 2, dev);
    check_size(*draft_probs, op, "draft_probs", 0, n);
    check_size(*draft_probs, op, "draft_probs", 1, vocab);
  }
  check_tensor(first_child, op, "first_child", at::kInt, 1, dev);
  check_size(first_child, op, "first_child", 0, n);
  check_tensor(next_sibling, op, "next_sibling", at::kInt, 1, dev);
  check_size(next_sibling, op, "next_sibling", 0, n);
  check_tensor(tree_indptr, op, "tree_indptr", at::kInt, 1, dev);
  TORCH_CHECK(tree_indptr.numel() >= 1, op, ": tree_indptr must hold B+1 >= 1 entries");
  const int64_t batch = tree_indptr.numel() - 1;
  check_tensor(uniforms, op, "uniforms", at::kFloat, 1, dev);
  check_size(uniforms, op, "uniforms", 0, n + batch);
  check_tensor(accept_local, op, "accept_local", at::kInt, 2, dev);
  check_size(accept_local, op, "accept_local", 0, batch);
  const int64_t width = accept_local.size(1);
  TORCH_CHECK(width >= 1 && width <= kMaxTreeNodes, op, ": accept_local.size(1) = max_depth + 1 ",
              "must be in [1, ", kMaxTreeNodes, "], got ", width);
  check_tensor(accept_len, op, "accept_len", at::kInt, 1, dev);
  check_size(accept_len, op, "accept_len", 0, batch);
  check_tensor(out_tokens, op, "out_tokens", at::kLong, 2, dev);
  check_size(out_tokens, op, "out_tokens", 0, batch);
  check_size(out_tokens, op, "out_tokens", 1, width);
  check_tensor(scratch, op, "scratch", at::kFloat, 3, dev);
  check_size(scratch, op, "scratch", 0, batch);
  check_size(scratch, op, "scratch", 1, 2);
  check_size(scratch, op, "scratch", 2, vocab);
}

void verify_sampling_cpu(const at::Tensor& candidates, const at::Tensor& target_probs,
                         const std::optional<at::Tensor>& draft_probs,
                         const at::Tensor& first_child, const at::Tensor& next_sibling,
                         const at::Tensor& tree_indptr, const at::Tensor& uniforms, int64_t mode,
                         const at::Tensor& accept_local, const at::Tensor& accept_len,
                         const at::Tensor& out_tokens, const at::Tensor& scratch) {
  check_verify_sampling(candidates, target_probs, draft_probs, first_child, next_sibling,
                        tree_indptr, uniforms, mode, accept_local, accept_len, out_tokens,
                        scratch);
  cpu::verify_sampling(
      candidates.data_ptr<int64_t>(), target_probs.data_ptr<float>(),
      draft_probs.has_value() ? draft_probs->data_ptr<float>() : nullptr,
      first_child.data_ptr<int32_t>(), next_sibling.data_ptr<int32_t>(),
      tree_indptr.data_ptr<int32_t>(), uniforms.data_ptr<float>(), tree_indptr.numel() - 1,
      candidates.numel(), target_probs.size(1), accept_local.size(1), mode,
      accept_local.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(),
      out_tokens.data_ptr<int64_t>(), scratch.data_ptr<float>());
}

#ifdef ADAEAGLE_WITH_CUDA
void verify_sampling_cuda(const at::Tensor& candidates, const at::Tensor& target_probs,
                          const std::optional<at::Tensor>& draft_probs,
                          const at::Tensor& first_child, const at::Tensor& next_sibling,
                          const at::Tensor& tree_indptr, const at::Tensor& uniforms,
                          int64_t mode, const at::Tensor& accept_local,
                          const at::Tensor& accept_len, const at::Tensor& out_tokens,
                          const at::Tensor& scratch) {
  check_verify_sampling(candidates, target_probs, draft_probs, first_child, next_sibling,
                        tree_indptr, uniforms, mode, accept_local, accept_len, out_tokens,
                        scratch);
  const c10::cuda::CUDAGuard guard(candidates.device());
  ADAEAGLE_CUDA_CHECK(launch_verify_sampling(
      candidates.data_ptr<int64_t>(), target_probs.data_ptr<float>(),
      draft_probs.has_value() ? draft_probs->data_ptr<float>() : nullptr,
      first_child.data_ptr<int32_t>(), next_sibling.data_ptr<int32_t>(),
      tree_indptr.data_ptr<int32_t>(), uniforms.data_ptr<float>(),
      static_cast<int>(tree_indptr.numel() - 1), candidates.numel(), target_probs.size(1),
      static_cast<int>(accept_local.size(1)), static_cast<int>(mode),
      accept_local.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(),
      out_tokens.data_ptr<int64_t>(), scratch.data_ptr<float>(),
      at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("verify_sampling", &verify_sampling_cpu); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("verify_sampling", &verify_sampling_cuda); }
#endif

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
// rms_norm

namespace {

RmsDtype check_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps,
                        const at::Tensor& out, bool half_ok) {
  constexpr const char* op = "rms_norm";
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || (half_ok && dtype == at::kHalf),
              op, ": x must be float32 or bfloat16", half_ok ? " or float16" : "",
              " on this device, got ", dtype);
  check_tensor(x, op, "x", dtype, 2, x.device());
  check_tensor(weight, op, "weight (same dtype as x)", dtype, 1, x.device());
  check_size(weight, op, "weight", 0, x.size(1));
  check_tensor(out, op, "out (same dtype as x)", dtype, 2, x.device());
  check_size(out, op, "out", 0, x.size(0));
  check_size(out, op, "out", 1, x.size(1));
  TORCH_CHECK(eps >= 0.0 && std::isfinite(eps), op, ": eps must be finite and >= 0, got ", eps);
  if (!out.is_same(x)) {
    at::assert_no_partial_overlap(out, x);
    at::assert_no_internal_overlap(out);
  }
  at::assert_no_overlap(out, weight);
  return dtype == at::kBFloat16 ? kRmsBFloat16 : dtype == at::kHalf ? kRmsFloat16 : kRmsFloat32;
}

void rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps,
                  const at::Tensor& out) {
  const RmsDtype dtype = check_rms_norm(x, weight, eps, out, false);
  cpu::rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), dtype, x.size(0), x.size(1),
                static_cast<float>(eps));
}

#ifdef ADAEAGLE_WITH_CUDA
void rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight, double eps,
                   const at::Tensor& out) {
  const RmsDtype dtype = check_rms_norm(x, weight, eps, out, true);
  TORCH_CHECK(x.size(0) <= INT32_MAX, "rms_norm: too many rows for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(x.device());
  ADAEAGLE_CUDA_CHECK(launch_rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), dtype,
                                      x.size(0), x.size(1), static_cast<float>(eps),
                                      at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("rms_norm", &rms_norm_cpu); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("rms_norm", &rms_norm_cuda); }
#endif

// ---------------------------------------------------------------------------------------------
// rope_store_kv

namespace {

RopeShape check_rope_store_kv(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                              const at::Tensor& kv_cache, int64_t layer, const at::Tensor& req,
                              const at::Tensor& rows, int64_t num_heads, int64_t num_kv_heads,
                              const at::Tensor& q_out, bool half_ok) {
  constexpr const char* op = "rope_store_kv";
  const auto dtype = qkv.scalar_type();
  const auto dev = qkv.device();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || (half_ok && dtype == at::kHalf),
              op, ": qkv must be float32 or bfloat16", half_ok ? " or float16" : "",
              " on this device, got ", dtype);
  check_tensor(qkv, op, "qkv", dtype, 2, dev);
  check_tensor(kv_cache, op, "kv_cache (same dtype as qkv)", dtype, 6, dev);
  TORCH_CHECK(kv_cache.size(1) == 2, op, ": kv_cache must be [L, 2, B, S_max, Hkv, D], got ",
              "shape ", kv_cache.sizes());
  TORCH_CHECK(num_heads >= 1 && num_kv_heads >= 1, op, ": num_heads and num_kv_heads must be ",
              ">= 1, got ", num_heads, " and ", num_kv_heads);
  check_size(kv_cache, op, "kv_cache", 4, num_kv_heads);
  const int64_t n = qkv.size(0), dim = kv_cache.size(5);
  TORCH_CHECK(dim > 0 && dim % 2 == 0, op, ": head dim D (kv_cache.size(5)) must be even and ",
              "> 0, got ", dim);
  TORCH_CHECK(qkv.size(1) == (num_heads + 2 * num_kv_heads) * dim, op,
              ": qkv.size(1) must be (num_heads + 2 * num_kv_heads) * D = (", num_heads,
              " + 2 * ", num_kv_heads, ") * ", dim, ", got shape ", qkv.sizes());
  TORCH_CHECK(layer >= 0 && layer < kv_cache.size(0), op, ": layer must be in [0, ",
              kv_cache.size(0), "), got ", layer);
  for (const auto& [t, name] : {std::pair{&cos, "cos (same dtype as qkv)"},
                                {&sin, "sin (same dtype as qkv)"}}) {
    check_tensor(*t, op, name, dtype, 2, dev);
    check_size(*t, op, name, 0, n);
    check_size(*t, op, name, 1, dim);
  }
  check_tensor(req, op, "req", at::kLong, 1, dev);
  check_size(req, op, "req", 0, n);
  check_tensor(rows, op, "rows", at::kLong, 1, dev);
  check_size(rows, op, "rows", 0, n);
  check_tensor(q_out, op, "q_out (same dtype as qkv)", dtype, 3, dev);
  check_size(q_out, op, "q_out", 0, n);
  check_size(q_out, op, "q_out", 1, num_heads);
  check_size(q_out, op, "q_out", 2, dim);
  for (const at::Tensor* written : {&kv_cache, &q_out}) {
    for (const at::Tensor* read : {&qkv, &cos, &sin, &req, &rows}) {
      at::assert_no_overlap(*written, *read);
    }
  }
  at::assert_no_overlap(q_out, kv_cache);
  return {n, num_heads, num_kv_heads, dim, kv_cache.size(0), kv_cache.size(2), kv_cache.size(3)};
}

RopeDtype rope_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kRopeFloat32;
    case at::kBFloat16: return kRopeBFloat16;
    default: return kRopeFloat16;
  }
}

void rope_store_kv_cpu(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                       const at::Tensor& kv_cache, int64_t layer, const at::Tensor& req,
                       const at::Tensor& rows, int64_t num_heads, int64_t num_kv_heads,
                       const at::Tensor& q_out) {
  const RopeShape shape = check_rope_store_kv(qkv, cos, sin, kv_cache, layer, req, rows,
                                              num_heads, num_kv_heads, q_out, false);
  cpu::rope_store_kv(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), kv_cache.data_ptr(), layer,
                     req.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), q_out.data_ptr(),
                     rope_dtype(qkv), shape);
}

#ifdef ADAEAGLE_WITH_CUDA
void rope_store_kv_cuda(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                        const at::Tensor& kv_cache, int64_t layer, const at::Tensor& req,
                        const at::Tensor& rows, int64_t num_heads, int64_t num_kv_heads,
                        const at::Tensor& q_out) {
  const RopeShape shape = check_rope_store_kv(qkv, cos, sin, kv_cache, layer, req, rows,
                                              num_heads, num_kv_heads, q_out, true);
  if (shape.num_tokens == 0) return;
  TORCH_CHECK(qkv.numel() / 2 / 256 < INT32_MAX, "rope_store_kv: too many tokens for the CUDA ",
              "kernel's grid");
  const c10::cuda::CUDAGuard guard(qkv.device());
  ADAEAGLE_CUDA_CHECK(launch_rope_store_kv(
      qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), kv_cache.data_ptr(), layer,
      req.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), q_out.data_ptr(), rope_dtype(qkv),
      shape, at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("rope_store_kv", &rope_store_kv_cpu); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("rope_store_kv", &rope_store_kv_cuda); }
#endif

// ---------------------------------------------------------------------------------------------
// linear

namespace {

// Names of the ggml types a GGUF file may hold, for the error on an unsupported one.
const char* any_ggml_type_name(int64_t type) {
  switch (type) {
    case 6: return "Q5_0";
    case 7: return "Q5_1";
    case 9: return "Q8_1";
    case 10: return "Q2_K";
    case 11: return "Q3_K";
    case 12: return "Q4_K";
    case 13: return "Q5_K";
    case 14: return "Q6_K";
    case 15: return "Q8_K";
    case 20: return "IQ4_NL";
    case 23: return "IQ4_XS";
    case 24: return "I8";
    case 25: return "I16";
    case 26: return "I32";
    case 27: return "I64";
    case 28: return "F64";
    default: return ggml_type_supported(static_cast<int>(type)) ?
                        ggml_type_name(static_cast<int>(type)) : "unknown";
  }
}

void check_linear(const at::Tensor& x, const at::Tensor& weight, int64_t ggml_type,
                  const std::optional<at::Tensor>& bias, const at::Tensor& out,
                  int64_t act_quant) {
  constexpr const char* op = "linear";
  TORCH_CHECK(act_quant == 0 || act_quant == 8, op, ": act_quant must be 0 (float activations) ",
              "or 8 (8-bit activation blocks), got ", act_quant);
  const auto dev = x.device();
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
              ": x must be float32 or bfloat16, got ", x.scalar_type());
  check_tensor(x, op, "x", x.scalar_type(), 2, dev);
  check_tensor(weight, op, "weight", at::kByte, 2, dev);
  TORCH_CHECK(ggml_type_supported(static_cast<int>(ggml_type)), op, ": ggml_type ", ggml_type,
              " (", any_ggml_type_name(ggml_type), ") is not supported; supported: F32 (0), ",
              "F16 (1), Q4_0 (2), Q4_1 (3), Q8_0 (8), BF16 (30)");
  const int type = static_cast<int>(ggml_type);
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  const int block = ggml_block_size(type);
  TORCH_CHECK(k % block == 0, op, ": K=x.size(1)=", k, " must be a multiple of ", block,
              ", the ", ggml_type_name(type), " block size");
  const int64_t row_bytes = k / block * ggml_block_bytes(type);
  TORCH_CHECK(weight.size(1) == row_bytes, op, ": weight.size(1) must be ", row_bytes,
              " bytes (K=", k, " weights of ", ggml_type_name(type), "), got shape ",
              weight.sizes());
  if (bias.has_value()) {
    check_tensor(*bias, op, "bias", at::kFloat, 1, dev);
    check_size(*bias, op, "bias", 0, n);
  }
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == x.scalar_type(), op,
              ": out must be float32 or x's dtype (", x.scalar_type(), "), got ",
              out.scalar_type());
  check_tensor(out, op, "out", out.scalar_type(), 2, dev);
  check_size(out, op, "out", 0, m);
  check_size(out, op, "out", 1, n);
}

void linear_cpu(const at::Tensor& x, const at::Tensor& weight, int64_t ggml_type,
                const std::optional<at::Tensor>& bias, const at::Tensor& out,
                int64_t act_quant) {
  check_linear(x, weight, ggml_type, bias, out, act_quant);
  cpu::linear(x.data_ptr(), x.scalar_type() == at::kBFloat16, weight.data_ptr<uint8_t>(),
              weight.size(1), static_cast<int>(ggml_type),
              bias.has_value() ? bias->data_ptr<float>() : nullptr, out.data_ptr(),
              out.scalar_type() == at::kBFloat16, x.size(0), weight.size(0), x.size(1),
              act_quant == 8);
}

#ifdef ADAEAGLE_WITH_CUDA
// act_quant is checked but ignored: CUDA always runs float activations.
void linear_cuda(const at::Tensor& x, const at::Tensor& weight, int64_t ggml_type,
                 const std::optional<at::Tensor>& bias, const at::Tensor& out,
                 int64_t act_quant) {
  check_linear(x, weight, ggml_type, bias, out, act_quant);
  const c10::cuda::CUDAGuard guard(x.device());
  ADAEAGLE_CUDA_CHECK(launch_linear(
      x.data_ptr(), x.scalar_type() == at::kBFloat16, weight.data_ptr<uint8_t>(),
      static_cast<int>(ggml_type), weight.size(1),
      bias.has_value() ? bias->data_ptr<float>() : nullptr, out.data_ptr(),
      out.scalar_type() == at::kBFloat16, x.size(0), weight.size(0), x.size(1),
      at::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("linear", &linear_cpu); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("linear", &linear_cuda); }
#endif

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
