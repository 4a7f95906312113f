// eagle_head_layer: one forward of an EAGLE-1 draft head on packed weights, in one op call.
//
// It runs the ops EagleHead.forward_tree runs on its packed path, in the same order and dtypes:
// embedding, concat with the features, linear (fc), linear (fused q/k/v, no input norm),
// rope_store_kv, tree_attention, linear (o), residual add, rms_norm, linear (fused gate/up),
// silu * up, linear (down), residual add. So its output is bit-identical to the Python path;
// what it removes is the Python between the ops, about half of a draft level on the CPU.
#include "composed_ops.h"

namespace adaeagle {
namespace {

constexpr const char* kOp = "eagle_head_layer";

struct HeadDims {
  int64_t m, n, hidden, heads, kv_heads, head_dim, qkv_rows, intermediate;
};

HeadDims check_eagle_head_layer(const at::Tensor& tokens, const at::Tensor& features,
                                const at::Tensor& embed, at::TensorList weights,
                                at::IntArrayRef ggml_types, at::IntArrayRef act_quants,
                                const c10::List<std::optional<at::Tensor>>& biases,
                                const at::Tensor& norm, const at::Tensor& kv_cache,
                                const at::Tensor& prefix_lens, const at::Tensor& tree_indptr,
                                const at::Tensor& mask_bits,
                                const std::optional<at::Tensor>& new_index, int64_t num_heads,
                                int64_t num_kv_heads, const at::Tensor& out) {
  const auto dtype = embed.scalar_type();
  const auto dev = embed.device();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, kOp,
              ": embed must be float32 or bfloat16, got ", dtype);
  check_tensor(embed, kOp, "embed", dtype, 2, dev);
  const int64_t hidden = embed.size(1);
  check_tensor(tokens, kOp, "tokens", at::kLong, 1, dev);
  const int64_t m = tokens.size(0);
  check_tensor(features, kOp, "features (embed's dtype)", dtype, 2, dev);
  check_size(features, kOp, "features", 0, m);
  check_size(features, kOp, "features", 1, hidden);
  check_tensor(norm, kOp, "norm (embed's dtype)", dtype, 1, dev);
  check_size(norm, kOp, "norm", 0, hidden);
  check_tensor(kv_cache, kOp, "kv_cache (embed's dtype)", dtype, 6, dev);
  check_size(kv_cache, kOp, "kv_cache (the head's one layer)", 0, 1);
  TORCH_CHECK(num_heads >= 1 && num_kv_heads >= 1, kOp, ": num_heads and num_kv_heads must ",
              "be >= 1, got ", num_heads, " and ", num_kv_heads);
  check_size(kv_cache, kOp, "kv_cache", 4, num_kv_heads);
  // The sub-ops check values; the shapes are checked here, before the cache is written.
  check_tensor(tree_indptr, kOp, "tree_indptr", at::kInt, 1, dev);
  const int64_t batch = tree_indptr.numel() - 1;
  TORCH_CHECK(batch >= 0 && batch <= kv_cache.size(2), kOp, ": tree_indptr must hold B+1 ",
              "entries for B <= ", kv_cache.size(2), " requests (kv_cache dim 2), got ",
              tree_indptr.numel());
  check_tensor(prefix_lens, kOp, "prefix_lens", at::kInt, 1, dev);
  check_size(prefix_lens, kOp, "prefix_lens (one per request of tree_indptr)", 0, batch);
  check_tensor(mask_bits, kOp, "mask_bits", at::kLong, 1, dev);
  const int64_t n = mask_bits.size(0);
  if (new_index.has_value()) {
    check_tensor(*new_index, kOp, "new_index", at::kLong, 1, dev);
    check_size(*new_index, kOp, "new_index", 0, m);
  } else {
    TORCH_CHECK(m == n, kOp, ": without new_index every node is new: tokens (", m,
                ") and mask_bits (", n, ") must have the same length");
  }
  for (const auto& [count, want, name] :
       {std::tuple{weights.size(), size_t{5}, "weights (fc, q/k/v, o, gate/up, down)"},
        {ggml_types.size(), size_t{5}, "ggml_types"},
        {act_quants.size(), size_t{5}, "act_quants"},
        {biases.size(), size_t{3}, "biases (fc, q/k/v, o; each a tensor or None)"}}) {
    TORCH_CHECK(count == want, kOp, ": ", name, " must hold ", want, " entries, got ", count);
  }
  const int64_t head_dim = kv_cache.size(5);
  const int64_t qkv_rows = (num_heads + 2 * num_kv_heads) * head_dim;
  const int64_t intermediate = weights[3].size(0) / 2;
  const int64_t rows[5] = {hidden, qkv_rows, hidden, 2 * intermediate, hidden};
  const int64_t inputs[5] = {2 * hidden, hidden, num_heads * head_dim, hidden, intermediate};
  const char* names[5] = {"weights[0] (fc)", "weights[1] (q/k/v)", "weights[2] (o)",
                          "weights[3] (gate/up)", "weights[4] (down)"};
  for (int64_t j = 0; j < 5; ++j) {
    check_packed_weight(weights[j], kOp, names[j], ggml_types[j], rows[j], inputs[j], dev);
  }
  const char* bias_names[3] = {"biases[0] (fc)", "biases[1] (q/k/v)", "biases[2] (o)"};
  for (int64_t j = 0; j < 3; ++j) {
    const std::optional<at::Tensor> bias = biases.get(j);
    if (bias.has_value()) {
      check_tensor(*bias, kOp, bias_names[j], at::kFloat, 1, dev);
      check_size(*bias, kOp, bias_names[j], 0, rows[j]);
    }
  }
  check_tensor(out, kOp, "out (embed's dtype)", dtype, 2, dev);
  check_size(out, kOp, "out", 0, m);
  check_size(out, kOp, "out", 1, hidden);
  return {m, n, hidden, num_heads, num_kv_heads, head_dim, qkv_rows, intermediate};
}

void eagle_head_layer(const at::Tensor& tokens, const at::Tensor& features,
                      const at::Tensor& embed, at::TensorList weights,
                      at::IntArrayRef ggml_types, at::IntArrayRef act_quants,
                      const c10::List<std::optional<at::Tensor>>& biases,
                      const at::Tensor& norm, const at::Tensor& cos, const at::Tensor& sin,
                      const at::Tensor& kv_cache, const at::Tensor& req, const at::Tensor& rows,
                      const at::Tensor& prefix_lens, const at::Tensor& tree_indptr,
                      const at::Tensor& mask_bits, const std::optional<at::Tensor>& new_index,
                      int64_t num_heads, int64_t num_kv_heads, double eps, double scale,
                      const at::Tensor& out) {
  const HeadDims d = check_eagle_head_layer(tokens, features, embed, weights, ggml_types,
                                            act_quants, biases, norm, kv_cache, prefix_lens,
                                            tree_indptr, mask_bits,
                                            new_index, num_heads, num_kv_heads, out);
  if (d.m == 0) return;
  const LayerOps& ops = layer_ops();
  const auto opts = embed.options();
  const std::optional<at::Tensor> no_bias;
  const std::optional<at::Tensor> no_lse;

  const at::Tensor fused_in = at::cat({at::embedding(embed, tokens), features}, 1);
  const at::Tensor x = at::empty({d.m, d.hidden}, opts);
  ops.linear.call(fused_in, weights[0], ggml_types[0], biases.get(0), x, act_quants[0]);
  const at::Tensor qkv = at::empty({d.m, d.qkv_rows}, opts);
  ops.linear.call(x, weights[1], ggml_types[1], biases.get(1), qkv, act_quants[1]);
  const at::Tensor q = at::empty({d.m, d.heads, d.head_dim}, opts);
  ops.rope_store_kv.call(qkv, cos, sin, kv_cache, 0, req, rows, d.heads, d.kv_heads, q);

  at::Tensor attn;
  if (new_index.has_value()) {
    // The nodes fed by earlier calls sit in the tree (their K/V are cached) but are not
    // recomputed: their query rows stay zero and their outputs are dropped.
    const at::Tensor q_all = at::zeros({d.n, d.heads, d.head_dim}, opts);
    q_all.index_copy_(0, *new_index, q);
    const at::Tensor attn_all = at::empty_like(q_all);
    ops.tree_attention.call(q_all, kv_cache, 0, prefix_lens, tree_indptr, mask_bits, scale, 0,
                            attn_all, no_lse);
    attn = attn_all.index_select(0, *new_index);
  } else {
    attn = at::empty_like(q);
    ops.tree_attention.call(q, kv_cache, 0, prefix_lens, tree_indptr, mask_bits, scale, 0,
                            attn, no_lse);
  }

  const at::Tensor proj = at::empty({d.m, d.hidden}, opts);
  ops.linear.call(attn.view({d.m, d.heads * d.head_dim}), weights[2], ggml_types[2],
                  biases.get(2), proj, act_quants[2]);
  x.add_(proj);
  const at::Tensor normed = at::empty({d.m, d.hidden}, opts);
  ops.rms_norm.call(x, norm, eps, normed);
  const at::Tensor gate_up = at::empty({d.m, 2 * d.intermediate}, opts);
  ops.linear.call(normed, weights[3], ggml_types[3], no_bias, gate_up, act_quants[3]);
  at::Tensor inter = at::silu(gate_up.narrow(1, 0, d.intermediate));
  inter.mul_(gate_up.narrow(1, d.intermediate, d.intermediate));
  ops.linear.call(inter, weights[4], ggml_types[4], no_bias, proj, act_quants[4]);
  at::add_out(const_cast<at::Tensor&>(out), x, proj);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(adaeagle, m) {
  // One EAGLE-1 head forward over packed weights: fc(concat(embed[tokens], features)), a
  // decoder layer without input norm whose new K/V go where rope_store_kv writes them, the
  // attention of tree_attention (full mode) for the nodes new_index (default: all), into out.
  m.def(
      "eagle_head_layer(Tensor tokens, Tensor features, Tensor embed, Tensor[] weights, "
      "int[] ggml_types, int[] act_quants, Tensor?[] biases, Tensor norm, Tensor cos, "
      "Tensor sin, Tensor(a!) kv_cache, Tensor req, Tensor rows, Tensor prefix_lens, "
      "Tensor tree_indptr, Tensor mask_bits, Tensor? new_index, int num_heads, "
      "int num_kv_heads, float eps, float scale, Tensor(b!) out) -> ()");
}

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("eagle_head_layer", &eagle_head_layer); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("eagle_head_layer", &eagle_head_layer); }
#endif

}  // namespace adaeagle
