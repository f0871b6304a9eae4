// What the transports of the `real` backend whose ranks are MPI processes (NCCL, CUDA IPC) share: device staging
// buffers that grow by size class and are reused from call to call, the wait for a CUDA event that keeps taking
// the rank's MPI failure notices and honours the run's deadline, and the backend that launches them. Includes
// CUDA headers: for kernels/ only.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>
#include <string>

#include "engine/backend.hpp"
#include "engine/transport_fabric.hpp"
#include "mpi/mpi_backend.hpp"

namespace eplab::kernels {

inline std::string cuda_text(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

// Device memory that grows to the next size class (nccl::staging_class) and is kept for the following calls.
class StagingBuffer {
 public:
  StagingBuffer() = default;
  StagingBuffer(const StagingBuffer&) = delete;
  StagingBuffer& operator=(const StagingBuffer&) = delete;
  ~StagingBuffer();
  // Returns the buffer, at least `bytes` long; *err is set (and null returned) when cudaMalloc fails. A buffer
  // that grows is a new allocation (*grew set), the old one freed: a cudaFree synchronizes the device, rare here.
  void* reserve(size_t bytes, cudaError_t* err, bool* grew = nullptr);
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Waits until `ev` has fired. Meanwhile: `check` (may throw, e.g. NCCL's asynchronous error), the transport's
// progress (a peer's failure notice fails the domain), the domain's failure and the deadline `d` (or the run's
// hang limit), each ending the wait with a FabricError that starts with `what`. *broken is set whenever the wait
// ends other than by the event firing: work may still be pending on the stream.
void wait_event(TransportFabric& f, cudaEvent_t ev, Deadline d, const std::string& what, bool* broken,
                const std::function<void()>& check = {});

// One process's part of such a transport: a rank on a device with its own stream and completion event, offering a
// native all-to-all-v. `broken_` marks work that may still be pending (an exchange that did not finish, a failed
// run): the subclass then tears down without waiting for peers.
class GpuAddOn : public MpiAddOn, public AlltoallvExtension {
 public:
  // Creates the stream and event on `device` (made current); throws EplabError naming rank, device and `host`.
  GpuAddOn(int rank, int device, const std::string& host);
  ~GpuAddOn() override;
  void* extension(ExtensionId id) override;
  std::string endpoint() const override { return " (device " + std::to_string(device_) + ")"; }
  void launch_ended(bool failed) override { broken_ = broken_ || failed; }

 protected:
  std::string where(const TransportFabric& f, Tag tag) const;
  // Throws FabricError naming the call, rank, device, tag, phase and `peer` (when >= 0), and marks the add-on broken.
  void cuda_check(cudaError_t e, const char* call, const TransportFabric& f, Tag tag, int peer = -1);

  int rank_, device_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
  bool broken_ = false;
};

// `--backend=real --transport T` with ranks as MPI processes: `setup` makes each process's add-on (launch_mpi_process);
// `available` says why the transport cannot run here beyond a missing GPU (a library not found), or "".
class ProcessGpuBackend : public Backend {
 public:
  using Setup = std::function<std::unique_ptr<MpiAddOn>(MpiProcessGroup&)>;
  ProcessGpuBackend(std::string transport, std::string description, Setup setup,
                    std::function<std::string()> available = {})
      : transport_(std::move(transport)),
        description_(std::move(description)),
        setup_(std::move(setup)),
        available_(std::move(available)) {}
  std::string name() const override { return "real"; }
  std::string description() const override { return description_; }
  Caps caps() const override { return Caps{}; }  // the engine's buffers are host memory, staged per exchange
  int fixed_world_size() const override { return mpi_world_size(); }
  bool in_process() const override { return false; }
  std::string unavailable() const override;
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override;

 private:
  std::string transport_, description_;
  Setup setup_;
  std::function<std::string()> available_;
};

}  // namespace eplab::kernels
