// The `real` backend's NCCL transport: the mpi transport's processes, matching, failure notices and barriers
// (mpi/mpi_backend.hpp's launch_mpi_process), plus an all-to-all-v extension that moves the engine's exchanges
// over NCCL. The engine's buffers are host memory, so one exchange is: a size round (one grouped
// ncclSend/ncclRecv of an 8-byte count per peer pair: the receiver cannot know sizes otherwise), H2D of every
// send into one device staging buffer, the payload round (one group of ncclSend/ncclRecv, self included,
// zero-byte messages skipped on both sides), and D2H of every receive out of another, on the rank's stream. After
// each group the rank polls the stream's event while taking MPI failure notices, so a peer's failure or a hang
// ends the wait and aborts the communicator; the D2H copies into pageable memory, which block the thread, are
// issued only once the group has finished.
// Messages outside an all-to-all-v (results to rank 0, checkpoints, barriers) go over MPI as on --backend=mpi:
// NCCL point-to-point calls issued one by one on one stream can deadlock when two ranks send to each other first.
// NCCL is loaded with dlopen, so the eplab binary runs where NCCL is absent until a run asks for it.
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "engine/transport_fabric.hpp"
#include "kernels/gpu_runtime.hpp"
#include "kernels/nccl_backend.hpp"
#include "kernels/nccl_plan.hpp"
#include "kernels/process_transport.hpp"
#include "mpi/mpi_backend.hpp"

namespace eplab {
namespace {

using kernels::cuda_text;
using kernels::StagingBuffer;

// The NCCL entry points this transport calls, from the library dlopen found.
struct NcclApi {
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclCommGetAsyncError) comm_get_async_error = nullptr;
  decltype(&ncclGetErrorString) get_error_string = nullptr;
  decltype(&ncclGetLastError) get_last_error = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  std::string path;   // the library that was loaded
  std::string error;  // why none was, or ""
};

const NcclApi& nccl_api() {
  static const NcclApi api = [] {
    NcclApi a;
    std::vector<std::string> tried;
    void* lib = nullptr;
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("EPLAB_NCCL_LIBRARY")) candidates.emplace_back(env);
    candidates.insert(candidates.end(), {"libnccl.so.2", "/usr/local/cuda/lib64/libnccl.so.2"});
    for (const std::string& c : candidates) {
      lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib) {
        a.path = c;
        break;
      }
      const char* e = dlerror();
      tried.push_back(c + " (" + (e ? e : "not found") + ")");
    }
    if (!lib) {
      a.error = "cannot load NCCL: tried";
      for (const std::string& t : tried) a.error += " " + t;
      a.error += "; set EPLAB_NCCL_LIBRARY to its libnccl.so.2";
      return a;
    }
    auto get = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn && a.error.empty()) a.error = a.path + " has no " + name + " (NCCL older than 2.19?)";
    };
    get(a.get_version, "ncclGetVersion");
    get(a.get_unique_id, "ncclGetUniqueId");
    get(a.comm_init_rank, "ncclCommInitRank");
    get(a.comm_destroy, "ncclCommDestroy");
    get(a.comm_abort, "ncclCommAbort");
    get(a.comm_get_async_error, "ncclCommGetAsyncError");
    get(a.get_error_string, "ncclGetErrorString");
    get(a.get_last_error, "ncclGetLastError");
    get(a.group_start, "ncclGroupStart");
    get(a.group_end, "ncclGroupEnd");
    get(a.send, "ncclSend");
    get(a.recv, "ncclRecv");
    return a;
  }();
  return api;
}

class NcclAddOn final : public kernels::GpuAddOn {
 public:
  NcclAddOn(const NcclApi& api, ncclComm_t comm, int rank, int device, const std::string& host)
      : GpuAddOn(rank, device, host), api_(api), comm_(comm) {}
  ~NcclAddOn() override {
    cudaSetDevice(device_);
    // A communicator with an exchange that did not finish (a peer failed, a wait expired, the run failed) can only
    // be aborted: destroying it could wait for peers that never come.
    if (broken_)
      api_.comm_abort(comm_);
    else
      api_.comm_destroy(comm_);
  }
  void alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                 Deadline d) override;

 private:
  void nccl_check(ncclResult_t r, const char* call, const TransportFabric& f, Tag tag) {
    if (r == ncclSuccess) return;
    broken_ = true;
    const char* last = api_.get_last_error(comm_);
    throw FabricError(std::string(call) + ": " + where(f, tag) + ": " + api_.get_error_string(r) +
                      (last && *last ? std::string(" (") + last + ")" : ""));
  }
  // Waits for everything enqueued on the stream, taking the mpi transport's failure notices meanwhile.
  void wait(TransportFabric& f, Tag tag, Deadline d, const char* round);

  const NcclApi& api_;
  ncclComm_t comm_;
  StagingBuffer send_dev_, recv_dev_, size_dev_;
  std::vector<uint64_t> size_host_;
};

void NcclAddOn::wait(TransportFabric& f, Tag tag, Deadline d, const char* round) {
  cuda_check(cudaEventRecord(done_, stream_), "cudaEventRecord", f, tag);
  kernels::wait_event(f, done_, d, std::string(round) + ": " + where(f, tag), &broken_, [&] {
    ncclResult_t async = ncclSuccess;
    nccl_check(api_.comm_get_async_error(comm_, &async), "ncclCommGetAsyncError", f, tag);
    if (async != ncclSuccess && async != ncclInProgress) nccl_check(async, round, f, tag);
  });
}

void NcclAddOn::alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                          Deadline d) {
  if (broken_)
    throw FabricError("alltoallv: " + where(f, tag) +
                      ": an earlier NCCL exchange of this rank did not finish; its communicator is unusable");
  cuda_check(cudaSetDevice(device_), "cudaSetDevice", f, tag);
  const nccl::ExchangeShape x = nccl::shape_of(sends, recvs);
  const std::string at = where(f, tag);

  // Size round: an 8-byte count to every peer but itself, in one group.
  size_host_.assign(sends.size() + recvs.size(), 0);
  std::copy(x.send_sizes.begin(), x.send_sizes.end(), size_host_.begin());
  cudaError_t err = cudaSuccess;
  auto* sizes = static_cast<uint64_t*>(size_dev_.reserve(size_host_.size() * sizeof(uint64_t), &err));
  cuda_check(err, "cudaMalloc (size staging)", f, tag);
  if (!size_host_.empty()) {
    cuda_check(
        cudaMemcpyAsync(sizes, size_host_.data(), sends.size() * sizeof(uint64_t), cudaMemcpyHostToDevice, stream_),
        "cudaMemcpyAsync H2D (sizes)", f, tag);
    nccl_check(api_.group_start(), "ncclGroupStart", f, tag);
    for (size_t i = 0; i < sends.size(); ++i)
      if (x.send_peers[i] != rank_)
        nccl_check(api_.send(sizes + i, 1, ncclUint64, x.send_peers[i], comm_, stream_), "ncclSend (size)", f, tag);
    for (size_t j = 0; j < recvs.size(); ++j)
      if (x.recv_peers[j] != rank_)
        nccl_check(api_.recv(sizes + sends.size() + j, 1, ncclUint64, x.recv_peers[j], comm_, stream_),
                   "ncclRecv (size)", f, tag);
    nccl_check(api_.group_end(), "ncclGroupEnd (sizes)", f, tag);
    wait(f, tag, d, "alltoallv size round");
    cuda_check(cudaMemcpy(size_host_.data() + sends.size(), sizes + sends.size(), recvs.size() * sizeof(uint64_t),
                          cudaMemcpyDeviceToHost),
               "cudaMemcpy D2H (sizes)", f, tag);
  }
  const nccl::PlannedExchange px =
      nccl::plan_exchange(rank_, x, std::span<const uint64_t>(size_host_).subspan(sends.size()), at);
  const nccl::AlltoallvPlan& plan = px.plan;

  // Payload round: stage the sends, one group of every message (self included), bring the receives back.
  if (!plan.sends.empty() || !plan.recvs.empty()) {
    auto* sdev = static_cast<char*>(send_dev_.reserve(plan.send_bytes, &err));
    cuda_check(err, "cudaMalloc (send staging)", f, tag);
    auto* rdev = static_cast<char*>(recv_dev_.reserve(plan.recv_bytes, &err));
    cuda_check(err, "cudaMalloc (receive staging)", f, tag);
    for (const nccl::StagedOp& op : plan.sends)
      cuda_check(cudaMemcpyAsync(sdev + op.offset, sends[op.entry].data.ptr, op.bytes, cudaMemcpyHostToDevice, stream_),
                 "cudaMemcpyAsync H2D", f, tag);
    nccl_check(api_.group_start(), "ncclGroupStart", f, tag);
    for (const nccl::StagedOp& op : plan.sends)
      nccl_check(api_.send(sdev + op.offset, op.bytes, ncclUint8, op.peer, comm_, stream_), "ncclSend", f, tag);
    for (const nccl::StagedOp& op : plan.recvs)
      nccl_check(api_.recv(rdev + op.offset, op.bytes, ncclUint8, op.peer, comm_, stream_), "ncclRecv", f, tag);
    nccl_check(api_.group_end(), "ncclGroupEnd", f, tag);
    wait(f, tag, d, "alltoallv");
    for (const nccl::StagedOp& op : plan.recvs)
      cuda_check(cudaMemcpyAsync(recvs[op.entry].data.ptr, rdev + op.offset, op.bytes, cudaMemcpyDeviceToHost, stream_),
                 "cudaMemcpyAsync D2H", f, tag);
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize", f, tag);
  }
  for (size_t j = 0; j < recvs.size(); ++j) recvs[j].bytes = recvs[j].total_bytes = px.recv_sizes[j];
}

// Every process: agree that NCCL may start (GPUs enough on every machine, the library found), share rank 0's
// unique id, and join the communicator on the device of the rank's place on its machine.
std::unique_ptr<MpiAddOn> start_nccl(MpiProcessGroup& g) {
  std::string why;
  const int devices = kernels::device_count(&why);
  if (devices == 0)
    why = "backend 'real' --transport nccl found no CUDA device on " + g.host() + ": " + why;
  else
    why = nccl::placement_refusal(g.size(), g.local_size(), devices, g.host());
  const NcclApi& api = nccl_api();
  if (why.empty() && !api.error.empty()) why = "backend 'real' --transport nccl " + api.error;
  // Every process learns whether any refused, so none waits in ncclCommInitRank for one that never comes.
  if (g.max_over_ranks(why.empty() ? 0 : 1) != 0)
    throw EplabError(!why.empty() ? why
                                  : "rank " + std::to_string(g.rank()) +
                                        ": another process refused to start NCCL (its error says why); NCCL was "
                                        "not started");
  ncclUniqueId id{};
  auto fail = [&](const std::string& call, const std::string& text) {
    throw EplabError(call + ": rank " + std::to_string(g.rank()) + " (device " + std::to_string(g.local_rank()) + ", " +
                     g.host() + "): " + text);
  };
  // rank 0's failure must reach the others, which otherwise wait in the broadcast: a zeroed id says it.
  std::string id_error;
  if (g.rank() == 0) {
    const ncclResult_t r = api.get_unique_id(&id);
    if (r != ncclSuccess) {
      id_error = api.get_error_string(r);
      id = ncclUniqueId{};
    }
  }
  g.broadcast(&id, sizeof id, 0);
  const ncclUniqueId zero{};
  if (std::memcmp(&id, &zero, sizeof id) == 0)
    fail("ncclGetUniqueId", id_error.empty() ? "rank 0 could not create the unique id (its error says why)" : id_error);
  const int device = g.local_rank();
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) fail("cudaSetDevice", cuda_text(e));
  ncclComm_t comm = nullptr;
  const ncclResult_t r = api.comm_init_rank(&comm, g.size(), id, g.rank());
  if (r != ncclSuccess) {
    const char* last = api.get_last_error(comm);
    fail("ncclCommInitRank",
         std::string(api.get_error_string(r)) + (last && *last ? std::string(" (") + last + ")" : ""));
  }
  try {
    return std::make_unique<NcclAddOn>(api, comm, g.rank(), device, g.host());
  } catch (...) {
    api.comm_destroy(comm);
    throw;
  }
}

}  // namespace

std::string nccl_load_error() { return nccl_api().error; }

std::unique_ptr<Backend> make_nccl_backend() {
  return std::make_unique<kernels::ProcessGpuBackend>(
      "nccl",
      "ranks as MPI processes, one per GPU (--transport nccl): all-to-all-v as grouped ncclSend/ncclRecv through "
      "device staging buffers, other messages over MPI, wall clock",
      &start_nccl, &nccl_load_error);
}

}  // namespace eplab
