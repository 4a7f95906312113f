// rms_norm on CPU (the math: adaeagle/rms_norm.h).
#pragma once

#include <cstdint>

#include "adaeagle/rms_norm.h"

namespace adaeagle::cpu {

// x, out [n, h] and weight [h] of `dtype` (fp32 or bf16), contiguous; out may alias x.
void rms_norm(const void* x, const void* weight, void* out, RmsDtype dtype, int64_t n,
              int64_t h, float eps);

}  // namespace adaeagle::cpu
