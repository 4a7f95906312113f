// Input checks shared by the op bindings: each names the argument and what was expected.
#pragma once

#include <torch/library.h>

#include <ATen/core/Tensor.h>

namespace adaeagle {

inline void check_tensor(const at::Tensor& t, const char* op, const char* name,
                         c10::ScalarType dtype, int64_t dim, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", c10::toString(dtype),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dimension(s), got shape ",
              t.sizes());
  TORCH_CHECK(t.device() == device, op, ": ", name, " must be on ", device, " like the other ",
              "inputs, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_size(const at::Tensor& t, const char* op, const char* name, int64_t dim,
                       int64_t expected) {
  TORCH_CHECK(t.size(dim) == expected, op, ": ", name, ".size(", dim, ") must be ", expected,
              ", got shape ", t.sizes());
}

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op, ": ",
              name, " must be float32, bfloat16 or float16, got ", dtype);
}

}  // namespace adaeagle
