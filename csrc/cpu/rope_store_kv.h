// rope_store_kv on CPU (the math: adaeagle/rope_store_kv.h).
#pragma once

#include <cstdint>

#include "adaeagle/rope_store_kv.h"

namespace adaeagle::cpu {

// qkv [N, (H + 2 Hkv) D], cos/sin [N, D], kv_cache [L, 2, B, S_max, Hkv, D] and q_out [N, H, D]
// of `dtype` (fp32 or bf16), contiguous, q_out and kv_cache overlapping no input; req/rows
// int64 [N]. Checks every req/row first (TORCH_CHECK naming the token) and writes nothing
// when one is out of range; then q_out gets the roped queries and
// kv_cache[layer, 0 / 1, req[i], rows[i]] token i's roped keys / its values.
void rope_store_kv(const void* qkv, const void* cos, const void* sin, void* kv_cache,
                   int64_t layer, const int64_t* req, const int64_t* rows, void* q_out,
                   RopeDtype dtype, const RopeShape& shape);

}  // namespace adaeagle::cpu
