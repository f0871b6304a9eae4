// What the NCCL transport decides without a GPU, so it is tested on any machine: the transport names of the
// `real` backend, the refusal of more ranks than GPUs, the staging buffers' size classes, and the plan of one
// all-to-all-v (where each message sits in the device staging buffers, which ncclSend/ncclRecv the group holds).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace eplab {
struct PeerSend;
struct PeerRecv;
}  // namespace eplab

namespace eplab::nccl {

// The `real` backend's transports, as --transport names them.
enum class RealTransport { kStaged, kNccl, kCudaIpc };
// "" and "staged": ranks as threads (kernels/gpu_transport.cpp); "nccl" and "cuda-ipc": processes, where this
// build has them (`nccl_built`, `ipc_built`). Throws EplabError naming the choices, or how to build one.
RealTransport parse_real_transport(const std::string& name, bool nccl_built, bool ipc_built);

// Why this process may not start NCCL, or "": NCCL refuses two ranks on one GPU, so a machine runs at most as
// many ranks as it has visible GPUs. `local_ranks` of the launch's `world` ranks run on `host`.
std::string placement_refusal(int world, int local_ranks, int visible_gpus, const std::string& host);

// Device staging buffers grow to a power of two of at least kMinStaging bytes and are reused from call to call
// (a cudaMalloc per call would synchronize the device).
constexpr size_t kMinStaging = size_t{1} << 16;
size_t staging_class(size_t bytes);

// Messages start on this alignment in the staging buffers (NCCL and the copy engines like aligned offsets).
constexpr size_t kStagingAlign = 256;

// One message of the exchange: the caller's entry (index into its sends or recvs), the peer, its place in the
// staging buffer. Zero-byte messages have no op: both sides know the size after the size round.
struct StagedOp {
  size_t entry = 0;
  int peer = -1;
  size_t offset = 0;
  size_t bytes = 0;
};

struct AlltoallvPlan {
  std::vector<StagedOp> sends;  // in the caller's order: NCCL matches a pair's messages in the order posted
  std::vector<StagedOp> recvs;
  size_t send_bytes = 0;  // staging bytes needed, aligned ends included
  size_t recv_bytes = 0;
};

// The plan of rank `me`'s part: `send_peers[i]` gets `send_sizes[i]` bytes; `recv_peers[j]` sends
// `recv_sizes[j]` bytes (learnt in the size round) into a buffer of `recv_capacity[j]`. Throws FabricError naming
// rank, peer, sizes and `where` when a message exceeds its receive buffer.
AlltoallvPlan plan_alltoallv(int me, std::span<const int> send_peers, std::span<const size_t> send_sizes,
                             std::span<const int> recv_peers, std::span<const size_t> recv_sizes,
                             std::span<const size_t> recv_capacity, const std::string& where);

// The sizes a rank's receives from itself get: its k-th receive from itself takes its k-th send to itself (the
// size round sends no message to itself). Returns one size per receive from `me`, in order; throws FabricError
// when the counts differ.
std::vector<size_t> self_sizes(int me, std::span<const int> send_peers, std::span<const size_t> send_sizes,
                               std::span<const int> recv_peers, const std::string& where);

// One all-to-all-v's peers and sizes, as the plan takes them.
struct ExchangeShape {
  std::vector<int> send_peers, recv_peers;
  std::vector<size_t> send_sizes, capacity;  // bytes to send; each receive buffer's capacity
};
ExchangeShape shape_of(std::span<const PeerSend> sends, std::span<const PeerRecv> recvs);

// After a size round: `announced[j]` is what receive j's peer said it sends (unused for a receive from `me`,
// which self_sizes pairs). Returns every receive's size and the plan.
struct PlannedExchange {
  std::vector<size_t> recv_sizes;
  AlltoallvPlan plan;
};
PlannedExchange plan_exchange(int me, const ExchangeShape& shape, std::span<const uint64_t> announced,
                              const std::string& where);

}  // namespace eplab::nccl
