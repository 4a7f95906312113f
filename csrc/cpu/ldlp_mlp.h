// CPU entry point of ldlp_mlp (raw pointers; shapes as in adaeagle_ext/ops.py).
#pragma once

#include <cstdint>

#include "adaeagle/ldlp_mlp.h"

namespace adaeagle::cpu {

// emb, hidden: act_dtype [batch, hidden_size]; w_in [width, 2*hidden_size], b_in [width],
// w_blocks [3, width, width], b_blocks [3, width], w_out [1, width], b_out [1], all weight_dtype.
// Writes lengths [batch] and, when not null, raw [batch] and max_len [1]. Allocates nothing;
// width must be at most kLdlpMaxWidth.
void ldlp_mlp(const void* emb, const void* hidden, LdlpDtype act_dtype, const void* w_in,
              const void* b_in, const void* w_blocks, const void* b_blocks, const void* w_out,
              const void* b_out, LdlpDtype weight_dtype, int64_t batch, int64_t hidden_size,
              int64_t width, int32_t k_max, float eps, int32_t* lengths, float* raw,
              int32_t* max_len);

}  // namespace adaeagle::cpu
