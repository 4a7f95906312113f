// Every adaeagle op: its schema, its input checks, and its CPU / CUDA registrations.
//
// Ops write caller-provided outputs (marked Tensor(x!)) and return nothing, so the hot path
// allocates nothing and never syncs; adaeagle_ext/ops.py holds the allocating wrappers.
#include <torch/library.h>

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "cpu/build_tree.h"
#include "cpu/tree_attention.h"
#include "adaeagle/build_tree.h"
#include "adaeagle/tree_attention.h"

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

// ---------------------------------------------------------------------------------------------
// ldlp_mlp

// ---------------------------------------------------------------------------------------------
// linear

}  // namespace adaeagle
