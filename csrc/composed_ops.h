// What the ops built from other adaeagle ops share: typed handles to those ops (called through
// the dispatcher, so each runs its own checks and device kernel) and the packed-weight check.
#pragma once

#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

#include "adaeagle/gguf_blocks.h"
#include "checks.h"

namespace adaeagle {

using LinearFn = void(const at::Tensor&, const at::Tensor&, int64_t,
                      const std::optional<at::Tensor>&, const at::Tensor&, int64_t);
using RmsNormFn = void(const at::Tensor&, const at::Tensor&, double, const at::Tensor&);
using RopeStoreKvFn = void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, int64_t, const at::Tensor&, const at::Tensor&,
                           int64_t, int64_t, const at::Tensor&);
using TreeAttentionFn = void(const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, double, int64_t,
                             const at::Tensor&, const std::optional<at::Tensor>&);

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// The ops of a decoder layer, looked up once.
struct LayerOps {
  c10::TypedOperatorHandle<LinearFn> linear = find_op<LinearFn>("adaeagle::linear");
  c10::TypedOperatorHandle<RmsNormFn> rms_norm = find_op<RmsNormFn>("adaeagle::rms_norm");
  c10::TypedOperatorHandle<RopeStoreKvFn> rope_store_kv =
      find_op<RopeStoreKvFn>("adaeagle::rope_store_kv");
  c10::TypedOperatorHandle<TreeAttentionFn> tree_attention =
      find_op<TreeAttentionFn>("adaeagle::tree_attention");
};

inline const LayerOps& layer_ops() {
  static const LayerOps ops;
  return ops;
}

// A packed weight of `rows` output rows over `k` inputs in GGML type `type`, checked before the
// composed op writes anything (the linear op would only find a mismatch mid-way).
inline void check_packed_weight(const at::Tensor& w, const char* op, const char* name,
                                int64_t type, int64_t rows, int64_t k, const at::Device& device) {
  check_tensor(w, op, name, at::kByte, 2, device);
  check_size(w, op, name, 0, rows);
  const int t = static_cast<int>(type);
  TORCH_CHECK(ggml_type_supported(t), op, ": the ggml type of ", name, " (", type,
              ") is not supported");
  TORCH_CHECK(k % ggml_block_size(t) == 0, op, ": ", name, " takes ", k, " inputs, not a ",
              "multiple of the ", ggml_type_name(t), " block size ", ggml_block_size(t));
  check_size(w, op, name, 1, k / ggml_block_size(t) * ggml_block_bytes(t));
}

}  // namespace adaeagle
