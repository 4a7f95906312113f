// CPU entry point of kv_compact (raw pointers; shapes as in adaeagle_ext/ops.py).
#pragma once

#include <cstdint>

namespace adaeagle::cpu {

// Checks every request's accepted path first (raising a c10::Error that names the request and
// path index), then moves the rows of all layers in place and writes seq_lens. `cache` points
// at element [0, 0, 0, 0, 0, 0]; strides of the first four dims are in bytes and each row is
// `row_bytes` contiguous bytes.
void kv_compact(void* cache, int64_t num_layers, int64_t batch, int64_t s_max,
                int64_t stride_layer, int64_t stride_kv, int64_t stride_batch,
                int64_t stride_seq, int64_t row_bytes, const int32_t* accept_local,
                int64_t width, const int32_t* accept_len, const int32_t* prefix_lens,
                int32_t* seq_lens);

}  // namespace adaeagle::cpu
