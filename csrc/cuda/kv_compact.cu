// kv_compact on CUDA: one block per (request, layer * 2 + k/v). The block checks the request's
// path, then copies its rows in ascending move order, the whole block on one row at a time
// with a barrier between moves, in the widest word that every address and stride allows.
#include <cstdint>

#include "adaeagle/kv_compact.h"

namespace adaeagle {
namespace {

constexpr int kMaxThreads = 256;

template <typename Word>
__global__ void kv_compact_kernel(char* cache, int64_t s_max, int64_t stride_layer,
                                  int64_t stride_kv, int64_t stride_batch, int64_t stride_seq,
                                  int64_t row_words, const int32_t* __restrict__ accept_local,
                                  int width, const int32_t* __restrict__ accept_len,
                                  const int32_t* __restrict__ prefix_lens,
                                  int32_t* __restrict__ seq_lens) {
  __shared__ int s_path_ok;
  const int64_t b = blockIdx.x;
  const int plane = blockIdx.y;
  const int32_t* path = accept_local + b * width;
  const int32_t n = accept_len[b];
  const int32_t prefix = prefix_lens[b];
  if (threadIdx.x == 0) {
    int where = 0;
    s_path_ok = kv_compact_check_path(path, width, n, prefix, s_max, &where) == kKvOk;
    if (plane == 0) seq_lens[b] = kv_compact_new_len(prefix, n);
  }
  __syncthreads();
  if (!s_path_ok) return;
  char* rows = cache + (plane / 2) * stride_layer + (plane % 2) * stride_kv + b * stride_batch;
  for (int i = 1; i <= n; ++i) {
    const KvRowMove move = kv_compact_move(path, prefix, i);
    if (move.src == move.dst) continue;  // the same for every thread: the barrier stays uniform
    const Word* src = reinterpret_cast<const Word*>(rows + move.src * stride_seq);
    Word* dst = reinterpret_cast<Word*>(rows + move.dst * stride_seq);
    for (int64_t k = threadIdx.x; k < row_words; k += blockDim.x) dst[k] = src[k];
    __syncthreads();
  }
}

template <typename Word>
cudaError_t launch_words(void* cache, int64_t num_layers, int64_t batch, int64_t s_max,
                         int64_t stride_layer, int64_t stride_kv, int64_t stride_batch,
                         int64_t stride_seq, int64_t row_bytes, const int32_t* accept_local,
                         int width, const int32_t* accept_len, const int32_t* prefix_lens,
                         int32_t* seq_lens, cudaStream_t stream) {
  const int64_t row_words = row_bytes / static_cast<int64_t>(sizeof(Word));
  const int64_t warps = row_words > 32 ? (row_words + 31) / 32 : 1;
  const int threads = static_cast<int>(warps * 32 < kMaxThreads ? warps * 32 : kMaxThreads);
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(num_layers * 2));
  kv_compact_kernel<Word><<<grid, threads, 0, stream>>>(
      static_cast<char*>(cache), s_max, stride_layer, stride_kv, stride_batch, stride_seq,
      row_words, accept_local, width, accept_len, prefix_lens, seq_lens);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_kv_compact(void* cache, int64_t num_layers, int64_t batch, int64_t s_max,
                              int64_t stride_layer, int64_t stride_kv, int64_t stride_batch,
                              int64_t stride_seq, int64_t row_bytes,
                              const int32_t* accept_local, int width,
                              const int32_t* accept_len, const int32_t* prefix_lens,
                              int32_t* seq_lens, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (num_layers < 1 || num_layers * 2 > 65535 || batch > 0x7fffffff) {
    return cudaErrorInvalidValue;
  }
  const uint64_t layout =
      static_cast<uint64_t>(reinterpret_cast<uintptr_t>(cache)) |
      static_cast<uint64_t>(stride_layer | stride_kv | stride_batch | stride_seq | row_bytes);
  const auto launch = [&](auto word) {
    return launch_words<decltype(word)>(cache, num_layers, batch, s_max, stride_layer,
                                        stride_kv, stride_batch, stride_seq, row_bytes,
                                        accept_local, width, accept_len, prefix_lens, seq_lens,
                                        stream);
  };
  if (layout % 16 == 0) return launch(uint4{});
  if (layout % 8 == 0) return launch(uint2{});
  if (layout % 4 == 0) return launch(uint32_t{});
  if (layout % 2 == 0) return launch(uint16_t{});
  return launch(uint8_t{});
}

}  // namespace adaeagle
