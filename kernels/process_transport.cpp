#include "kernels/process_transport.hpp"

#include <chrono>
#include <cstdlib>
#include <thread>

#include "kernels/gpu_runtime.hpp"
#include "kernels/nccl_plan.hpp"

namespace eplab::kernels {

StagingBuffer::~StagingBuffer() {
  if (ptr_) cudaFree(ptr_);
}

void* StagingBuffer::reserve(size_t bytes, cudaError_t* err, bool* grew) {
  if (grew) *grew = false;
  if (bytes <= bytes_ && ptr_) return ptr_;
  if (ptr_) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
  const size_t cls = nccl::staging_class(bytes);
  *err = cudaMalloc(&ptr_, cls);
  if (*err != cudaSuccess) return ptr_ = nullptr;
  bytes_ = cls;
  if (grew) *grew = true;
  return ptr_;
}

void wait_event(TransportFabric& f, cudaEvent_t ev, Deadline d, const std::string& what, bool* broken,
                const std::function<void()>& check) {
  bool caller = false;
  const double limit = f.limit_of(d, &caller);
  try {
    for (;;) {
      const cudaError_t q = cudaEventQuery(ev);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) throw FabricError(what + ": cudaEventQuery: " + cuda_text(q));
      if (check) check();
      f.check_wait(what, limit, caller, [] { return std::string(" (GPU work still pending on the stream)"); });
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  } catch (...) {
    *broken = true;
    throw;
  }
}

GpuAddOn::GpuAddOn(int rank, int device, const std::string& host) : rank_(rank), device_(device) {
  auto fail = [&](const char* call, cudaError_t e) {
    if (stream_) cudaStreamDestroy(stream_);
    throw EplabError(std::string(call) + ": rank " + std::to_string(rank) + " (device " + std::to_string(device) +
                     ", " + host + "): " + cuda_text(e));
  };
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) fail("cudaSetDevice", e);
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking); e != cudaSuccess)
    fail("cudaStreamCreate", e);
  if (cudaError_t e = cudaEventCreateWithFlags(&done_, cudaEventDisableTiming); e != cudaSuccess)
    fail("cudaEventCreate", e);
}

GpuAddOn::~GpuAddOn() {
  cudaSetDevice(device_);
  if (!broken_) cudaStreamSynchronize(stream_);
  cudaEventDestroy(done_);
  cudaStreamDestroy(stream_);
}

void* GpuAddOn::extension(ExtensionId id) {
  return id == ExtensionId::kAlltoallv ? static_cast<AlltoallvExtension*>(this) : nullptr;
}

std::string GpuAddOn::where(const TransportFabric& f, Tag tag) const {
  return "rank " + std::to_string(rank_) + endpoint() + ", tag " + describe_tag(tag) + ", phase " + f.phase();
}

void GpuAddOn::cuda_check(cudaError_t e, const char* call, const TransportFabric& f, Tag tag, int peer) {
  if (e == cudaSuccess) return;
  broken_ = true;
  throw FabricError(std::string(call) + ": " + where(f, tag) +
                    (peer >= 0 ? ", peer " + std::to_string(peer) : std::string()) + ": " + cuda_text(e));
}

std::string ProcessGpuBackend::unavailable() const {
  std::string why;
  if (device_count(&why) == 0)
    return "backend 'real' found no CUDA device: " + why + "; use --backend=mpi for ranks as processes without a GPU";
  if (available_)
    if (const std::string e = available_(); !e.empty()) return "backend 'real' --transport " + transport_ + " " + e;
  return {};
}

void ProcessGpuBackend::launch(const Topology& topo, const LaunchOptions& opts,
                               const std::function<void(Fabric&)>& rank_main) {
  if (const std::string why = unavailable(); !why.empty()) throw EplabError(why);
  // A world of one started without mpirun: Open MPI would start a daemon for a singleton, which a machine with
  // only the carried libraries lacks; one rank never spawns others.
  if (mpi_world_size() == 1) setenv("OMPI_MCA_ess_singleton_isolated", "1", 0);
  launch_mpi_process(topo, opts, rank_main, MpiLaunchHooks{"real --transport " + transport_, setup_});
}

}  // namespace eplab::kernels
