// The `real` backend's CUDA-IPC transport: the mpi transport's processes, matching, failure notices and barriers
// (launch_mpi_process), plus an all-to-all-v extension whose payload moves GPU to GPU. Every rank keeps one
// device receive window; one exchange is three rounds of small fabric messages (over MPI, on the exchange's own
// tag, matched per peer in posting order) around the copies:
//   1. sizes: each sender tells each receiver its byte count;
//   2. grants: each receiver lays its messages out in its window (nccl::plan_alltoallv) and sends each sender its
//      window's cudaIpcMemHandle, the window's generation (it changes when the window grows) and the offset;
//   3. the sender copies H2D into its own staging buffer, then D2D into the mapped window (opened once per
//      generation), waits for the copies, and sends "done"; the receiver then copies D2H out of its window.
// A rank's messages to itself go from its staging buffer into its own window without IPC. Processes share a GPU
// freely (IPC maps another process's allocation on the same device too), so one GPU runs several ranks. The
// engine's buffers are host memory: H2D and D2H stay, the copy between ranks is on the GPU.
#include <map>

#include "kernels/gpu_runtime.hpp"
#include "kernels/ipc_backend.hpp"
#include "kernels/nccl_plan.hpp"
#include "kernels/process_transport.hpp"
#include "mpi/mpi_backend.hpp"

namespace eplab {
namespace {

using kernels::cuda_text;
using kernels::StagingBuffer;

// What a receiver tells a sender: where in its window the sender's message goes.
struct Grant {
  cudaIpcMemHandle_t handle;
  uint64_t generation = 0;
  uint64_t offset = 0;
};

class IpcAddOn final : public kernels::GpuAddOn {
 public:
  using GpuAddOn::GpuAddOn;
  ~IpcAddOn() override {
    cudaSetDevice(device_);
    if (!broken_) cudaStreamSynchronize(stream_);
    for (auto& [peer, m] : mapped_) cudaIpcCloseMemHandle(m.ptr);
  }
  void alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                 Deadline d) override;

 private:
  struct Mapping {
    uint64_t generation = 0;
    void* ptr = nullptr;
  };
  // The peer's window, mapped into this process for `g`'s generation.
  char* window_of(int peer, const Grant& g, const TransportFabric& f, Tag tag) {
    Mapping& m = mapped_[peer];
    if (m.ptr && m.generation == g.generation) return static_cast<char*>(m.ptr);
    if (m.ptr) cuda_check(cudaIpcCloseMemHandle(m.ptr), "cudaIpcCloseMemHandle", f, tag, peer);
    m.ptr = nullptr;
    cuda_check(cudaIpcOpenMemHandle(&m.ptr, g.handle, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle", f, tag,
               peer);
    m.generation = g.generation;
    return static_cast<char*>(m.ptr);
  }

  StagingBuffer send_dev_, window_;
  cudaIpcMemHandle_t window_handle_{};
  uint64_t generation_ = 0;  // of window_: 0 before it exists
  std::map<int, Mapping> mapped_;
};

void IpcAddOn::alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                         Deadline d) {
  if (broken_)
    throw FabricError("alltoallv: " + where(f, tag) +
                      ": an earlier CUDA-IPC exchange of this rank did not finish; its buffers may still be written");
  cuda_check(cudaSetDevice(device_), "cudaSetDevice", f, tag);
  const std::string at = where(f, tag);
  const nccl::ExchangeShape x = nccl::shape_of(sends, recvs);
  auto wait_all = [&](std::vector<Request>& reqs) {
    try {
      f.wait_all(reqs, d);
    } catch (...) {
      broken_ = true;
      throw;
    }
    reqs.clear();
  };
  std::vector<Request> reqs;

  // 1. Sizes.
  std::vector<uint64_t> size_out(x.send_sizes.begin(), x.send_sizes.end()), size_in(recvs.size(), 0);
  for (size_t i = 0; i < sends.size(); ++i)
    if (x.send_peers[i] != rank_) reqs.push_back(f.isend(x.send_peers[i], tag, ConstBuf{&size_out[i], 8}));
  for (size_t j = 0; j < recvs.size(); ++j)
    if (x.recv_peers[j] != rank_) reqs.push_back(f.irecv(x.recv_peers[j], tag, MutBuf{&size_in[j], 8}));
  wait_all(reqs);
  const nccl::PlannedExchange px = nccl::plan_exchange(rank_, x, size_in, at);
  const nccl::AlltoallvPlan& plan = px.plan;

  // 2. Grants: the window holds every receive; a grown window is a new allocation with a new handle.
  cudaError_t err = cudaSuccess;
  bool grew = false;
  char* window = static_cast<char*>(window_.reserve(plan.recv_bytes, &err, &grew));
  cuda_check(err, "cudaMalloc (receive window)", f, tag);
  if (grew) {
    cuda_check(cudaIpcGetMemHandle(&window_handle_, window), "cudaIpcGetMemHandle", f, tag);
    ++generation_;
  }
  std::vector<Grant> grant_out(plan.recvs.size()), grant_in(plan.sends.size());
  for (size_t k = 0; k < plan.recvs.size(); ++k) {
    const nccl::StagedOp& op = plan.recvs[k];
    grant_out[k] = Grant{window_handle_, generation_, op.offset};
    if (op.peer != rank_) reqs.push_back(f.isend(op.peer, tag, ConstBuf{&grant_out[k], sizeof(Grant)}));
  }
  for (size_t k = 0; k < plan.sends.size(); ++k)
    if (plan.sends[k].peer != rank_)
      reqs.push_back(f.irecv(plan.sends[k].peer, tag, MutBuf{&grant_in[k], sizeof(Grant)}));
  wait_all(reqs);

  // 3. Copies: H2D into this rank's staging buffer, D2D into each receiver's window (its own for itself).
  std::vector<size_t> self_offsets;  // the window offsets of this rank's receives from itself, in order
  for (const nccl::StagedOp& op : plan.recvs)
    if (op.peer == rank_) self_offsets.push_back(op.offset);
  if (!plan.sends.empty()) {
    auto* sdev = static_cast<char*>(send_dev_.reserve(plan.send_bytes, &err));
    cuda_check(err, "cudaMalloc (send staging)", f, tag);
    size_t self_k = 0;
    for (size_t k = 0; k < plan.sends.size(); ++k) {
      const nccl::StagedOp& op = plan.sends[k];
      cuda_check(cudaMemcpyAsync(sdev + op.offset, sends[op.entry].data.ptr, op.bytes, cudaMemcpyHostToDevice, stream_),
                 "cudaMemcpyAsync H2D", f, tag, op.peer);
      char* dst = op.peer == rank_ ? window + self_offsets.at(self_k++)
                                   : window_of(op.peer, grant_in[k], f, tag) + grant_in[k].offset;
      cuda_check(cudaMemcpyAsync(dst, sdev + op.offset, op.bytes, cudaMemcpyDefault, stream_),
                 "cudaMemcpyAsync D2D (into the receiver's window)", f, tag, op.peer);
    }
    cuda_check(cudaEventRecord(done_, stream_), "cudaEventRecord", f, tag);
    kernels::wait_event(f, done_, d, "alltoallv copies: " + at, &broken_);
  }
  // The receiver may read its window once every sender has said its copies are done.
  const uint8_t marker = 1;
  std::vector<uint8_t> done_in(plan.recvs.size(), 0);
  for (const nccl::StagedOp& op : plan.sends)
    if (op.peer != rank_) reqs.push_back(f.isend(op.peer, tag, ConstBuf{&marker, 1}));
  for (size_t k = 0; k < plan.recvs.size(); ++k)
    if (plan.recvs[k].peer != rank_) reqs.push_back(f.irecv(plan.recvs[k].peer, tag, MutBuf{&done_in[k], 1}));
  wait_all(reqs);
  for (const nccl::StagedOp& op : plan.recvs)
    cuda_check(cudaMemcpyAsync(recvs[op.entry].data.ptr, window + op.offset, op.bytes, cudaMemcpyDeviceToHost, stream_),
               "cudaMemcpyAsync D2H", f, tag, op.peer);
  cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize", f, tag);
  for (size_t j = 0; j < recvs.size(); ++j) recvs[j].bytes = recvs[j].total_bytes = px.recv_sizes[j];
}

// Every process: a device (its place on its machine, modulo the GPUs: several ranks may share one), a stream.
std::unique_ptr<MpiAddOn> start_ipc(MpiProcessGroup& g) {
  std::string why;
  const int devices = kernels::device_count(&why);
  // Every process learns whether any lacks a GPU before any starts.
  if (g.max_over_ranks(devices == 0 ? 1 : 0) != 0)
    throw EplabError(devices == 0
                         ? "backend 'real' --transport cuda-ipc found no CUDA device on " + g.host() + ": " + why
                         : "rank " + std::to_string(g.rank()) +
                               ": another process found no CUDA device (its error says which)");
  return std::make_unique<IpcAddOn>(g.rank(), g.local_rank() % devices, g.host());
}

}  // namespace

std::unique_ptr<Backend> make_ipc_backend() {
  return std::make_unique<kernels::ProcessGpuBackend>(
      "cuda-ipc",
      "ranks as MPI processes on one machine, any number per GPU (--transport cuda-ipc): all-to-all-v payload "
      "copied by the sender into the receiver's device window, other messages over MPI, wall clock",
      &start_ipc);
}

}  // namespace eplab
