#include "cpu/kv_compact.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "adaeagle/kv_compact.h"

namespace adaeagle::cpu {
namespace {

// Below this many bytes per task, threads cost more than they save.
constexpr int64_t kMinBytesPerTask = 256 * 1024;

std::string describe(KvCompactStatus status, int64_t request, int where, const int32_t* path,
                     int32_t accept_len, int32_t prefix, int64_t width, int64_t s_max) {
  const std::string at = "kv_compact: request " + std::to_string(request) + ": ";
  switch (status) {
    case kKvBadAcceptLen:
      return at + "accept_len=" + std::to_string(accept_len) + " must be in [0, " +
             std::to_string(width - 1) + "] (accept_local has " + std::to_string(width) +
             " columns)";
    case kKvBadPrefix:
      return at + "prefix_lens=" + std::to_string(prefix) + " must be >= 0";
    case kKvBadRoot:
      return at + "accept_local[0]=" + std::to_string(path[0]) + ", expected the root 0";
    case kKvNotIncreasing:
      return at + "accept_local[" + std::to_string(where) + "]=" + std::to_string(path[where]) +
             " must be greater than accept_local[" + std::to_string(where - 1) + "]=" +
             std::to_string(path[where - 1]) + " (a root-to-node path has increasing ids)";
    case kKvOutOfRange:
      return at + "row prefix_lens + accept_local[" + std::to_string(where) + "] = " +
             std::to_string(static_cast<int64_t>(prefix) + path[where]) +
             " is out of range for S_max=" + std::to_string(s_max);
    default:
      return at + "invalid accepted path";
  }
}

}  // namespace

void kv_compact(void* cache, int64_t num_layers, int64_t batch, int64_t s_max,
                int64_t stride_layer, int64_t stride_kv, int64_t stride_batch,
                int64_t stride_seq, int64_t row_bytes, const int32_t* accept_local,
                int64_t width, const int32_t* accept_len, const int32_t* prefix_lens,
                int32_t* seq_lens) {
  int64_t moved_rows = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* path = accept_local + b * width;
    int where = 0;
    const KvCompactStatus status = kv_compact_check_path(
        path, static_cast<int>(width), accept_len[b], prefix_lens[b], s_max, &where);
    TORCH_CHECK(status == kKvOk, describe(status, b, where, path, accept_len[b], prefix_lens[b],
                                          width, s_max));
    for (int i = 1; i <= accept_len[b]; ++i) moved_rows += path[i] != i;
  }

  const int64_t planes = num_layers * 2;
  const int64_t tasks = planes * batch;
  const int64_t total_bytes = moved_rows * planes * row_bytes;
  const int64_t grain =
      total_bytes == 0 ? tasks : std::max<int64_t>(1, tasks * kMinBytesPerTask / total_bytes);
  auto* base = static_cast<char*>(cache);
  if (moved_rows > 0) {
    at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t plane = task / batch;
        const int64_t b = task % batch;
        char* rows = base + (plane / 2) * stride_layer + (plane % 2) * stride_kv +
                     b * stride_batch;
        const int32_t* path = accept_local + b * width;
        for (int i = 1; i <= accept_len[b]; ++i) {
          const KvRowMove move = kv_compact_move(path, prefix_lens[b], i);
          if (move.src == move.dst) continue;
          std::memcpy(rows + move.dst * stride_seq, rows + move.src * stride_seq,
                      static_cast<size_t>(row_bytes));
        }
      }
    });
  }
  for (int64_t b = 0; b < batch; ++b) {
    seq_lens[b] = kv_compact_new_len(prefix_lens[b], accept_len[b]);
  }
}

}  // namespace adaeagle::cpu
