#include "kernels/nccl_plan.hpp"

#include <algorithm>
#include <bit>

#include "engine/error.hpp"
#include "engine/fabric.hpp"

namespace eplab::nccl {

RealTransport parse_real_transport(const std::string& name, bool nccl_built, bool ipc_built) {
  if (name.empty() || name == "staged") return RealTransport::kStaged;
  if (name == "nccl") {
    if (!nccl_built)
      throw EplabError(
          "--transport nccl: this build has no NCCL transport: it needs the CUDA toolkit's nccl.h and MPI; "
          "reconfigure with -DEPLAB_WITH_NCCL=ON -DEPLAB_WITH_MPI=ON, or use --transport staged");
    return RealTransport::kNccl;
  }
  if (name == "cuda-ipc") {
    if (!ipc_built)
      throw EplabError(
          "--transport cuda-ipc: this build has no CUDA-IPC transport: it needs MPI (its ranks are MPI "
          "processes); reconfigure with -DEPLAB_WITH_MPI=ON, or use --transport staged");
    return RealTransport::kCudaIpc;
  }
  throw EplabError("--transport '" + name + "': backend 'real' has staged (ranks as threads, default), nccl " +
                   "(mpirun -n N, one rank per GPU) and cuda-ipc (mpirun -n N, any number of ranks per GPU)");
}

std::string placement_refusal(int world, int local_ranks, int visible_gpus, const std::string& host) {
  if (local_ranks <= visible_gpus) return {};
  return "backend 'real' --transport nccl runs one rank per GPU (NCCL refuses two ranks on one GPU): " + host +
         " runs " + std::to_string(local_ranks) + " of the " + std::to_string(world) + " ranks but has " +
         std::to_string(visible_gpus) + " visible GPU" + (visible_gpus == 1 ? "" : "s") +
         " (CUDA_VISIBLE_DEVICES narrows them); start at most " + std::to_string(visible_gpus) +
         " ranks per machine (mpirun -n " + std::to_string(std::max(visible_gpus, 1)) +
         " on one machine, --nodes and --gpus-per-node to match), or run several ranks per GPU with "
         "--transport cuda-ipc (processes) or --transport staged (threads in one process)";
}

size_t staging_class(size_t bytes) { return std::bit_ceil(std::max(bytes, kMinStaging)); }

namespace {

size_t aligned(size_t n) { return (n + kStagingAlign - 1) / kStagingAlign * kStagingAlign; }

std::vector<StagedOp> lay_out(std::span<const int> peers, std::span<const size_t> sizes, size_t* total) {
  std::vector<StagedOp> ops;
  size_t at = 0;
  for (size_t i = 0; i < peers.size(); ++i) {
    if (sizes[i] == 0) continue;
    ops.push_back(StagedOp{i, peers[i], at, sizes[i]});
    at = aligned(at + sizes[i]);
  }
  *total = at;
  return ops;
}

}  // namespace

AlltoallvPlan plan_alltoallv(int me, std::span<const int> send_peers, std::span<const size_t> send_sizes,
                             std::span<const int> recv_peers, std::span<const size_t> recv_sizes,
                             std::span<const size_t> recv_capacity, const std::string& where) {
  if (send_peers.size() != send_sizes.size() || recv_peers.size() != recv_sizes.size() ||
      recv_sizes.size() != recv_capacity.size())
    throw FabricError("alltoallv plan: " + where + ": " + std::to_string(send_peers.size()) + " send peers with " +
                      std::to_string(send_sizes.size()) + " sizes, " + std::to_string(recv_peers.size()) +
                      " receive peers with " + std::to_string(recv_sizes.size()) + " sizes and " +
                      std::to_string(recv_capacity.size()) + " buffers");
  for (size_t j = 0; j < recv_peers.size(); ++j)
    if (recv_sizes[j] > recv_capacity[j])
      throw FabricError("alltoallv: " + where + ": rank " + std::to_string(recv_peers[j]) + " sends " +
                        std::to_string(recv_sizes[j]) + " bytes to rank " + std::to_string(me) +
                        " whose receive buffer holds " + std::to_string(recv_capacity[j]));
  AlltoallvPlan p;
  p.sends = lay_out(send_peers, send_sizes, &p.send_bytes);
  p.recvs = lay_out(recv_peers, recv_sizes, &p.recv_bytes);
  return p;
}

std::vector<size_t> self_sizes(int me, std::span<const int> send_peers, std::span<const size_t> send_sizes,
                               std::span<const int> recv_peers, const std::string& where) {
  std::vector<size_t> out;
  for (size_t i = 0; i < send_peers.size(); ++i)
    if (send_peers[i] == me) out.push_back(send_sizes[i]);
  const auto recvs = static_cast<size_t>(std::count(recv_peers.begin(), recv_peers.end(), me));
  if (recvs != out.size())
    throw FabricError("alltoallv: " + where + ": rank " + std::to_string(me) + " sends " + std::to_string(out.size()) +
                      " messages to itself but posts " + std::to_string(recvs) + " receives from itself");
  return out;
}

ExchangeShape shape_of(std::span<const PeerSend> sends, std::span<const PeerRecv> recvs) {
  ExchangeShape x;
  for (const PeerSend& s : sends) {
    x.send_peers.push_back(s.peer);
    x.send_sizes.push_back(s.data.bytes);
  }
  for (const PeerRecv& r : recvs) {
    x.recv_peers.push_back(r.peer);
    x.capacity.push_back(r.data.capacity);
  }
  return x;
}

PlannedExchange plan_exchange(int me, const ExchangeShape& x, std::span<const uint64_t> announced,
                              const std::string& where) {
  PlannedExchange out;
  const std::vector<size_t> own = self_sizes(me, x.send_peers, x.send_sizes, x.recv_peers, where);
  out.recv_sizes.resize(x.recv_peers.size());
  for (size_t j = 0, k = 0; j < x.recv_peers.size(); ++j)
    out.recv_sizes[j] = x.recv_peers[j] == me ? own[k++] : static_cast<size_t>(announced[j]);
  out.plan = plan_alltoallv(me, x.send_peers, x.send_sizes, x.recv_peers, out.recv_sizes, x.capacity, where);
  return out;
}

}  // namespace eplab::nccl
