// The `mpi` backend: each rank is an MPI process (`mpirun -n N eplab run --backend=mpi ...`), on one machine or
// several with a hostfile; real bytes, wall clock, verified like emu. It is also the bootstrap that the
// multi-process GPU transports use: launch_mpi_process runs the mpi transport with what such a transport adds.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "engine/backend.hpp"
#include "engine/transport.hpp"

namespace eplab {

std::unique_ptr<Backend> make_mpi_backend();

// The processes of one launch, for a transport's bootstrap before its rank starts (an NCCL unique id, verbs
// endpoints). Every call is collective: every process of the launch makes it, in the same order.
class MpiProcessGroup {
 public:
  virtual ~MpiProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual int local_rank() const = 0;  // among the launch's processes on this machine
  virtual int local_size() const = 0;
  virtual std::string host() const = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // Every process's `bytes` at `mine`, in rank order at `all` (size() x bytes).
  virtual void allgather(const void* mine, size_t bytes, void* all) = 0;
  virtual int max_over_ranks(int value) = 0;
};

// What a transport adds to the mpi one: extensions (a native all-to-all-v over another library). Messages that
// no extension takes, failure notices and barriers stay the mpi transport's.
class MpiAddOn {
 public:
  virtual ~MpiAddOn() = default;
  virtual void* extension(ExtensionId id) = 0;
  virtual std::string endpoint() const { return ""; }  // appended to the rank in errors, e.g. " (device 0)"
  // The rank has returned, `failed` if with an error or with ranks marked failed; then the add-on is destroyed.
  virtual void launch_ended(bool failed) {}
};

struct MpiLaunchHooks {
  std::string backend = "mpi";  // the backend as errors name it, e.g. "real' --transport 'nccl"
  // Runs on every process once MPI is up, before its rank starts; null: the plain mpi transport. It may throw
  // (every process alike, or the others wait in its next collective).
  std::function<std::unique_ptr<MpiAddOn>(MpiProcessGroup&)> setup;
};

// Runs this process's rank of a launch over MPI (the mpi backend's launch, with `hooks`).
void launch_mpi_process(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main,
                        const MpiLaunchHooks& hooks);
// The size of the MPI world this process belongs to, without starting MPI (mpirun's environment says it); 1
// when started without a launcher.
int mpi_world_size();

}  // namespace eplab
