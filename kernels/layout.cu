// get_dispatch_layout on the GPU: one thread per token, counts gathered in shared-memory histograms when they
// fit (hot experts would otherwise serialize on a few global atomics) and flushed once per block. Integer
// counts, so the result is exact whatever order the atomics land in.
#include <cstdint>
#include <string>

#include "kernels/launch_check.cuh"
#include "kernels/ops.hpp"

namespace eplab::kernels {
namespace {

constexpr int kThreads = 256;
constexpr size_t kSharedLimit = 40 * 1024;  // under the 48 KiB that needs no opt-in

struct LayoutArgs {
  const int32_t* slots;
  int num_tokens, topk, num_slots, slots_per_rank, gpus_per_node, num_ranks, num_nodes;
  int32_t *per_rank, *per_node, *per_slot, *invalid;
  uint8_t* in_rank;
};

template <bool kShared>
__global__ void layout_kernel(LayoutArgs a) {
  extern __shared__ int32_t hist[];
  int32_t* per_slot = a.per_slot;
  int32_t* per_rank = a.per_rank;
  int32_t* per_node = a.per_node;
  int32_t* invalid = a.invalid;
  if constexpr (kShared) {
    const int n = a.num_slots + a.num_ranks + a.num_nodes + 1;
    for (int i = threadIdx.x; i < n; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    per_slot = hist;
    per_rank = hist + a.num_slots;
    per_node = per_rank + a.num_ranks;
    invalid = per_node + a.num_nodes;
  }
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < a.num_tokens; t += gridDim.x * blockDim.x) {
    const int32_t* row = a.slots + static_cast<size_t>(t) * a.topk;
    for (int k = 0; k < a.topk; ++k) {
      const int32_t s = row[k];
      if (s < 0) continue;
      if (s >= a.num_slots) {
        atomicAdd(invalid, 1);
        continue;
      }
      atomicAdd(&per_slot[s], 1);
      const int r = s / a.slots_per_rank;
      const int node = r / a.gpus_per_node;
      // A token counts once per rank and node: only its first valid selection there adds. topk is small
      // (<= 32 in practice), so rescanning beats a per-thread bitmap over every rank.
      bool rank_seen = false, node_seen = false;
      for (int j = 0; j < k; ++j) {
        const int32_t sj = row[j];
        if (sj < 0 || sj >= a.num_slots) continue;
        const int rj = sj / a.slots_per_rank;
        rank_seen |= rj == r;
        node_seen |= rj / a.gpus_per_node == node;
      }
      if (!rank_seen) {
        atomicAdd(&per_rank[r], 1);
        a.in_rank[static_cast<size_t>(t) * a.num_ranks + r] = 1;
      }
      if (!node_seen) atomicAdd(&per_node[node], 1);
    }
  }
  if constexpr (kShared) {
    __syncthreads();
    for (int i = threadIdx.x; i < a.num_slots; i += blockDim.x)
      if (per_slot[i]) atomicAdd(&a.per_slot[i], per_slot[i]);
    for (int i = threadIdx.x; i < a.num_ranks; i += blockDim.x)
      if (per_rank[i]) atomicAdd(&a.per_rank[i], per_rank[i]);
    for (int i = threadIdx.x; i < a.num_nodes; i += blockDim.x)
      if (per_node[i]) atomicAdd(&a.per_node[i], per_node[i]);
    if (threadIdx.x == 0 && *invalid) atomicAdd(a.invalid, *invalid);
  }
}

}  // namespace

void dispatch_layout(const int32_t* slots, int num_tokens, int topk, int num_slots, int slots_per_rank,
                     int gpus_per_node, int32_t* tokens_per_rank, int32_t* tokens_per_node, int32_t* tokens_per_slot,
                     uint8_t* is_token_in_rank, int32_t* invalid_selections, GpuStream stream) {
  const std::string shape = "tokens " + std::to_string(num_tokens) + ", topk " + std::to_string(topk) + ", slots " +
                            std::to_string(num_slots) + ", slots/rank " + std::to_string(slots_per_rank);
  if (num_tokens < 0 || topk < 0 || num_slots <= 0 || slots_per_rank <= 0 || gpus_per_node <= 0 ||
      num_slots % slots_per_rank != 0)
    throw std::runtime_error("kernels: dispatch_layout: bad shape (" + shape + ", gpus/node " +
                             std::to_string(gpus_per_node) + ")");
  LayoutArgs a{slots,
               num_tokens,
               topk,
               num_slots,
               slots_per_rank,
               gpus_per_node,
               0,
               0,
               tokens_per_rank,
               tokens_per_node,
               tokens_per_slot,
               invalid_selections,
               is_token_in_rank};
  a.num_ranks = num_slots / slots_per_rank;
  a.num_nodes = (a.num_ranks + gpus_per_node - 1) / gpus_per_node;
  cudaStream_t s = stream;
  check_call(cudaMemsetAsync(tokens_per_rank, 0, sizeof(int32_t) * a.num_ranks, s), "memset", shape);
  check_call(cudaMemsetAsync(tokens_per_node, 0, sizeof(int32_t) * a.num_nodes, s), "memset", shape);
  check_call(cudaMemsetAsync(tokens_per_slot, 0, sizeof(int32_t) * num_slots, s), "memset", shape);
  check_call(cudaMemsetAsync(invalid_selections, 0, sizeof(int32_t), s), "memset", shape);
  check_call(cudaMemsetAsync(is_token_in_rank, 0, static_cast<size_t>(num_tokens) * a.num_ranks, s), "memset", shape);
  if (num_tokens == 0) return;
  const size_t shared = sizeof(int32_t) * (static_cast<size_t>(num_slots) + a.num_ranks + a.num_nodes + 1);
  const int blocks = blocks_for(num_tokens, kThreads);
  if (shared <= kSharedLimit) {
    layout_kernel<true><<<blocks, kThreads, shared, s>>>(a);
  } else {
    layout_kernel<false><<<blocks, kThreads, 0, s>>>(a);
  }
  check_launch("dispatch_layout", shape);
}

}  // namespace eplab::kernels
