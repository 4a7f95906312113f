// kv_compact: per-request path checks and per-row moves shared by the CPU loop and the CUDA
// kernel.
//
// The draft tree of request b sits at cache rows prefix + local id. After verification its
// accepted path (local ids, root 0 first, accept_len drafts after it) slides down so that
// path node i lands on row prefix + i. Ancestors precede descendants, so the path is strictly
// increasing and move i has dst = prefix + i <= src = prefix + path[i]. Executed in ascending
// i, every move reads a row that no earlier move wrote (path[j] >= j > i for j > i), so the
// moves are alias-safe in place without scratch memory.
#pragma once

#include "adaeagle/common.h"

namespace adaeagle {

enum KvCompactStatus : int32_t {
  kKvOk = 0,
  kKvBadAcceptLen = 1,   // accept_len outside [0, width - 1]
  kKvBadRoot = 2,        // path[0] != 0
  kKvNotIncreasing = 3,  // path[i] <= path[i - 1]
  kKvBadPrefix = 4,      // prefix_len < 0
  kKvOutOfRange = 5      // prefix + path[accept_len] >= S_max
};

// Checks the accepted path of one request; on failure *where is the offending path index.
ADAEAGLE_HD KvCompactStatus kv_compact_check_path(const int32_t* path, int width,
                                                  int32_t accept_len, int32_t prefix,
                                                  int64_t s_max, int* where) {
  *where = 0;
  if (accept_len < 0 || accept_len >= width) return kKvBadAcceptLen;
  if (prefix < 0) return kKvBadPrefix;
  if (path[0] != 0) return kKvBadRoot;
  for (int i = 1; i <= accept_len; ++i) {
    *where = i;
    if (path[i] <= path[i - 1]) return kKvNotIncreasing;
  }
  *where = accept_len;
  if (static_cast<int64_t>(prefix) + path[accept_len] >= s_max) return kKvOutOfRange;
  return kKvOk;
}

// Source and destination rows of move i (1 <= i <= accept_len) of a checked path.
struct KvRowMove {
  int64_t src;
  int64_t dst;
};

ADAEAGLE_HD KvRowMove kv_compact_move(const int32_t* path, int32_t prefix, int i) {
  return {static_cast<int64_t>(prefix) + path[i], static_cast<int64_t>(prefix) + i};
}

// New sequence length: the prefix, the root and the accepted drafts.
ADAEAGLE_HD int32_t kv_compact_new_len(int32_t prefix, int32_t accept_len) {
  return prefix + accept_len + 1;
}

#if defined(ADAEAGLE_WITH_CUDA) || defined(__CUDACC__)
}  // namespace adaeagle
#include <cuda_runtime_api.h>
namespace adaeagle {
// Launches kv_compact on `stream`. `cache` points at element [0, 0, 0, 0, 0, 0]; the strides
// of the first four dims are in bytes and a row (Hkv * D elements) is `row_bytes` contiguous
// bytes. Requests whose path fails kv_compact_check_path move nothing (the caller validates);
// seq_lens is written for every request.
cudaError_t launch_kv_compact(void* cache, int64_t num_layers, int64_t batch, int64_t s_max,
                              int64_t stride_layer, int64_t stride_kv, int64_t stride_batch,
                              int64_t stride_seq, int64_t row_bytes,
                              const int32_t* accept_local, int width,
                              const int32_t* accept_len, const int32_t* prefix_lens,
                              int32_t* seq_lens, cudaStream_t stream);
#endif

}  // namespace adaeagle
