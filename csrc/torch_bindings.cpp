// Every adaeagle op: its schema, its input checks, and its CPU / CUDA registrations.
//
// Ops write caller-provided outputs (marked Tensor(x!)) and return nothing, so the hot path
// allocates nothing and never syncs; adaeagle_ext/ops.py holds the allocating wrappers.
#include <torch/library.h>

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "cpu/build_tree.h"
#include "cpu/linear.h"
#include "adaeagle/build_tree.h"
#include "adaeagle/gguf_blocks.h"

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
                  const std::optional<at::Tensor>& bias, const at::Tensor& out) {
  constexpr const char* op = "linear";
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
                const std::optional<at::Tensor>& bias, const at::Tensor& out) {
  check_linear(x, weight, ggml_type, bias, out);
  cpu::linear(x.data_ptr(), x.scalar_type() == at::kBFloat16, weight.data_ptr<uint8_t>(),
              weight.size(1), static_cast<int>(ggml_type),
              bias.has_value() ? bias->data_ptr<float>() : nullptr, out.data_ptr(),
              out.scalar_type() == at::kBFloat16, x.size(0), weight.size(0), x.size(1));
}

#ifdef ADAEAGLE_WITH_CUDA
void linear_cuda(const at::Tensor& x, const at::Tensor& weight, int64_t ggml_type,
                 const std::optional<at::Tensor>& bias, const at::Tensor& out) {
  check_linear(x, weight, ggml_type, bias, out);
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

}  // namespace adaeagle
