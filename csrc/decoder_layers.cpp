// decoder_layers: the layers of a Llama-family decoder on packed weights, in one op call.
//
// Each layer runs the very ops the Python model runs, in its order and on its dtypes (rms_norm,
// linear on the fused q/k/v rows, rope_store_kv, tree_attention, linear, residual add, rms_norm,
// linear on the fused gate/up rows, silu * up, linear, residual add), so the residual stream is
// bit-identical to LlamaForCausalLM's modules. What the op removes is the Python between them:
// about 360 op calls per decode step of the default model, a quarter of a CPU step.
#include "composed_ops.h"

namespace adaeagle {
namespace {

constexpr const char* kOp = "decoder_layers";

struct Dims {
  int64_t layers, hidden, heads, kv_heads, head_dim, qkv_rows, intermediate;
};

Dims check_decoder_layers(const at::Tensor& x, at::TensorList norms, at::TensorList weights,
                          at::IntArrayRef ggml_types, at::IntArrayRef act_quants,
                          const c10::List<std::optional<at::Tensor>>& qkv_biases,
                          const at::Tensor& kv_cache, int64_t num_heads, int64_t num_kv_heads) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, kOp,
              ": x must be float32 or bfloat16, got ", dtype);
  check_tensor(x, kOp, "x", dtype, 2, x.device());
  check_tensor(kv_cache, kOp, "kv_cache (same dtype as x)", dtype, 6, x.device());
  const int64_t layers = kv_cache.size(0);
  TORCH_CHECK(static_cast<int64_t>(norms.size()) == 2 * layers, kOp, ": norms must hold 2 ",
              "tensors per layer (", 2 * layers, " for kv_cache's ", layers, " layers), got ",
              norms.size());
  for (const auto& [count, name] : {std::pair{weights.size(), "weights"},
                                    {ggml_types.size(), "ggml_types"},
                                    {act_quants.size(), "act_quants"}}) {
    TORCH_CHECK(static_cast<int64_t>(count) == 4 * layers, kOp, ": ", name, " must hold 4 ",
                "entries per layer (q/k/v, o, gate/up, down: ", 4 * layers, "), got ", count);
  }
  TORCH_CHECK(static_cast<int64_t>(qkv_biases.size()) == layers, kOp, ": qkv_biases must ",
              "hold one entry (a tensor or None) per layer (", layers, "), got ",
              qkv_biases.size());
  TORCH_CHECK(num_heads >= 1 && num_kv_heads >= 1, kOp, ": num_heads and num_kv_heads must ",
              "be >= 1, got ", num_heads, " and ", num_kv_heads);
  check_size(kv_cache, kOp, "kv_cache", 4, num_kv_heads);
  const int64_t hidden = x.size(1), head_dim = kv_cache.size(5);
  const int64_t qkv_rows = (num_heads + 2 * num_kv_heads) * head_dim;
  const int64_t intermediate = weights.empty() ? 0 : weights[2].size(0) / 2;
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t j = 0; j < 2; ++j) {
      check_tensor(norms[2 * l + j], kOp, "norms[i] (same dtype as x)", dtype, 1, x.device());
      check_size(norms[2 * l + j], kOp, "norms[i]", 0, hidden);
    }
    const int64_t rows[4] = {qkv_rows, hidden, 2 * intermediate, hidden};
    const int64_t inputs[4] = {hidden, num_heads * head_dim, hidden, intermediate};
    const char* names[4] = {"weights[4 * layer] (q/k/v)", "weights[4 * layer + 1] (o)",
                            "weights[4 * layer + 2] (gate/up)", "weights[4 * layer + 3] (down)"};
    for (int64_t j = 0; j < 4; ++j) {
      check_packed_weight(weights[4 * l + j], kOp, names[j], ggml_types[4 * l + j], rows[j],
                          inputs[j], x.device());
    }
  }
  return {layers, hidden, num_heads, num_kv_heads, head_dim, qkv_rows, intermediate};
}

void decoder_layers(const at::Tensor& x, at::TensorList norms, at::TensorList weights,
                    at::IntArrayRef ggml_types, at::IntArrayRef act_quants,
                    const c10::List<std::optional<at::Tensor>>& qkv_biases,
                    const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& kv_cache,
                    const at::Tensor& req, const at::Tensor& rows,
                    const at::Tensor& prefix_lens, const at::Tensor& tree_indptr,
                    const at::Tensor& mask_bits, int64_t num_heads, int64_t num_kv_heads,
                    double eps, double scale) {
  const Dims d = check_decoder_layers(x, norms, weights, ggml_types, act_quants, qkv_biases,
                                      kv_cache, num_heads, num_kv_heads);
  const int64_t n = x.size(0);
  if (n == 0) return;
  const LayerOps& ops = layer_ops();
  const auto opts = x.options();
  // One set of buffers serves every layer.
  const at::Tensor normed = at::empty({n, d.hidden}, opts);
  const at::Tensor qkv = at::empty({n, d.qkv_rows}, opts);
  const at::Tensor q = at::empty({n, d.heads, d.head_dim}, opts);
  const at::Tensor attn = at::empty({n, d.heads, d.head_dim}, opts);
  const at::Tensor attn_rows = attn.view({n, d.heads * d.head_dim});
  const at::Tensor proj = at::empty({n, d.hidden}, opts);
  const at::Tensor gate_up = at::empty({n, 2 * d.intermediate}, opts);
  const at::Tensor inter = at::empty({n, d.intermediate}, opts);
  const at::Tensor gate = gate_up.narrow(1, 0, d.intermediate);
  const at::Tensor up = gate_up.narrow(1, d.intermediate, d.intermediate);
  const std::optional<at::Tensor> no_bias;
  const std::optional<at::Tensor> no_lse;
  for (int64_t l = 0; l < d.layers; ++l) {
    const int64_t w = 4 * l;
    ops.rms_norm.call(x, norms[2 * l], eps, normed);
    ops.linear.call(normed, weights[w], ggml_types[w], qkv_biases.get(l), qkv, act_quants[w]);
    ops.rope_store_kv.call(qkv, cos, sin, kv_cache, l, req, rows, d.heads, d.kv_heads, q);
    ops.tree_attention.call(q, kv_cache, l, prefix_lens, tree_indptr, mask_bits, scale, 0, attn,
                            no_lse);
    ops.linear.call(attn_rows, weights[w + 1], ggml_types[w + 1], no_bias, proj,
                    act_quants[w + 1]);
    x.add_(proj);
    ops.rms_norm.call(x, norms[2 * l + 1], eps, normed);
    ops.linear.call(normed, weights[w + 2], ggml_types[w + 2], no_bias, gate_up,
                    act_quants[w + 2]);
    at::silu_out(const_cast<at::Tensor&>(inter), gate);
    inter.mul_(up);
    ops.linear.call(inter, weights[w + 3], ggml_types[w + 3], no_bias, proj, act_quants[w + 3]);
    x.add_(proj);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(adaeagle, m) {
  // All layers of a Llama decoder over packed weights on the residual stream x, in place: per
  // layer 2 norms and 4 packed weights (fused q/k/v, o, fused gate/up, down); RoPE tables
  // cos/sin [N, D]; cache rows written as rope_store_kv writes them; attention as
  // tree_attention (full mode) computes it.
  m.def(
      "decoder_layers(Tensor(a!) x, Tensor[] norms, Tensor[] weights, int[] ggml_types, "
      "int[] act_quants, Tensor?[] qkv_biases, Tensor cos, Tensor sin, Tensor(b!) kv_cache, "
      "Tensor req, Tensor rows, Tensor prefix_lens, Tensor tree_indptr, Tensor mask_bits, "
      "int num_heads, int num_kv_heads, float eps, float scale) -> ()");
}

TORCH_LIBRARY_IMPL(adaeagle, CPU, m) { m.impl("decoder_layers", &decoder_layers); }
#ifdef ADAEAGLE_WITH_CUDA
TORCH_LIBRARY_IMPL(adaeagle, CUDA, m) { m.impl("decoder_layers", &decoder_layers); }
#endif

}  // namespace adaeagle
